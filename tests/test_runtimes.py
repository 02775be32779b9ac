"""The inference runtimes' paths (bench/runners/runtime_runner.py) and torch-compile's freezing:
what they compute, what they refuse, what they cache, and how the sweep records them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bench import environment, run_config
from bench.run_config import NotApplicable, framework, unavailable
from bench.runners import RunConfig, make_runner
from bench.runners.runtime_runner import EXPORT_DIR
from bench.sweep import CaseSkipped, Sweep
from bench.sweep.process_worker import ProcessWorker
from bench.sweep.worker import status_of
from impls.checks import err
from impls.spec import UNetSpec
from tests.fakes import FakeBenchmark
from tests.helpers import GATE_BATCH, GATE_SIZE, GATE_SPEC

SPEC = UNetSpec(width=4, depth=2)
SIZE, BATCH = 16, 2
CPU_RUNTIMES = ("onnxruntime", "openvino", "torch-aoti")


def _runner(path: str, task: str = "infer", **options):
    return make_runner(
        path, SPEC, batch=BATCH, size=SIZE, precision="fp32", device="cpu", task=task, **options
    )


@pytest.fixture(scope="module")
def eager_logits() -> np.ndarray:
    return _runner("torch-eager", upconv="native").outputs("infer")["logits"]


# -- what each runtime computes ---------------------------------------------------------------


@pytest.mark.parametrize("path", CPU_RUNTIMES)
def test_a_runtime_computes_torch_eagers_forward_and_trains_nothing(path, eager_logits) -> None:
    runner = _runner(path)
    assert framework(path) == "runtime" and runner.settings["framework"] == "runtime"
    logits = runner.outputs("infer")["logits"]
    assert logits.shape == eager_logits.shape and err(logits, eager_logits) < 1e-5
    assert runner.settings["export"].startswith("wrote ")  # exported and checked in its first call
    assert np.array_equal(runner.predict(runner.work.images), logits)
    runner.infer()
    with pytest.raises(NotApplicable, match=f"{path} is an inference runtime"):
        runner.train_step()


def test_a_second_runner_loads_the_exported_file_instead_of_exporting(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(EXPORT_DIR, str(tmp_path))
    first = _runner("onnxruntime")
    first.infer()
    assert first.settings["export"].startswith("wrote ")
    assert first.settings["providers"] == ["CPUExecutionProvider"]
    second = _runner("onnxruntime")
    second.infer()
    assert second.settings["export"].startswith(f"reused {first.file.name}")
    other_size = make_runner(
        "onnxruntime", SPEC, batch=BATCH, size=24, precision="fp32", device="cpu", task="infer"
    )
    assert other_size.file != first.file  # a file per case: its shape is fixed


def test_openvino_computes_in_the_precision_asked_for() -> None:
    """OpenVINO computes in bf16 by default on CPUs that have it: the path says which, explicitly."""
    runner = _runner("openvino")
    runner.infer()
    assert runner.settings["INFERENCE_PRECISION_HINT"] == "f32"
    bf16 = make_runner("openvino", SPEC, batch=BATCH, size=SIZE, precision="bf16", device="cpu", task="infer")
    try:
        bf16.infer()
    except NotApplicable as error:  # a CPU without BF16
        assert "no BF16" in str(error)
    else:
        assert bf16.settings["INFERENCE_PRECISION_HINT"] == "bf16"


# -- what cannot run, and why -----------------------------------------------------------------


def test_a_runtime_case_that_cannot_run_says_why(monkeypatch) -> None:
    infer = RunConfig("onnxruntime", SPEC, SIZE, BATCH, task="infer")
    assert unavailable(infer) is None
    assert unavailable(RunConfig("torch-eager", SPEC, SIZE, BATCH)) is None
    status, why = unavailable(infer.replace(task="train"))
    assert status == "not-applicable" and "inference runtime" in why
    status, why = unavailable(infer.replace(precision="bf16"))
    assert status == "not-applicable" and "no bf16 convolutions" in why
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name)
    )
    status, why = unavailable(infer)
    assert status == "not-installed" and why.startswith("onnxruntime needs onnxruntime, not installed")
    with pytest.raises(ValueError, match="runs on one device"):
        RunConfig("openvino", SPEC, SIZE, 4, task="infer", devices=2)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        RunConfig("tensorrt", SPEC, SIZE, BATCH, task="infer")
    assert status_of("NotApplicable: openvino bf16: no BF16") == "not-applicable"
    assert status_of("RuntimeError: NotApplicable") == "error"


@pytest.fixture
def sweep(tmp_path, monkeypatch) -> Sweep:
    monkeypatch.setattr(environment, "peak_tflops", lambda *a: 1.0)
    return Sweep(
        progress_file=tmp_path / "progress.jsonl",
        compile_cache=tmp_path / "cache",
        min_rounds=2,
        max_time=0.05,
        warm_up=0.0,
        replicates=1,
        announce=lambda line: None,
    )


def test_the_sweep_records_what_cannot_run_and_starts_no_worker_for_it(sweep, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))

    def no_worker(*args, **kwargs):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(ProcessWorker, "__init__", no_worker)
    sweep.cases = [
        RunConfig("onnxruntime", SPEC, SIZE, BATCH, task="train"),
        RunConfig("openvino", SPEC, SIZE, BATCH, task="infer"),
    ]
    for case, status in zip(sweep.cases, ("not-applicable", "not-installed"), strict=True):
        with pytest.raises(CaseSkipped, match=f"^{status}: "):
            sweep.run(case, FakeBenchmark())
    assert [r["status"] for r in sweep.records] == ["not-applicable", "not-installed"]


def test_a_runtimes_export_and_build_are_its_compile_time(sweep) -> None:
    """Cold: a fresh worker exports and builds; cached: a fresh worker loads the file the cold one
    wrote, in the case's compile folder."""
    sweep.cases = [
        RunConfig("torch-eager", SPEC, SIZE, BATCH, task="infer"),
        RunConfig("onnxruntime", SPEC, SIZE, BATCH, task="infer"),
    ]
    _, runtime = (sweep.run(case, FakeBenchmark()) for case in sweep.cases)
    assert runtime["status"] == "ok" and runtime["parity"]["errors"]["logits"] < 1e-5
    assert runtime["settings"]["export"].startswith("reused ")  # the cached worker's
    assert runtime["compile_seconds_cold"] > runtime["compile_seconds_cached"] >= 0
    assert not runtime["compile_cold_reused"]
    assert list((Path(runtime["compile_folder"]) / "export").glob("onnxruntime-*.onnx"))


def test_a_runtime_predicts_a_whole_image_in_tiles_untimed(sweep) -> None:
    """The tiled task through a runtime: its predict over the tiles, the forward through the gate."""
    sweep.timing = False
    sweep.cases = [
        RunConfig(path, SPEC, SIZE, BATCH, task="tiled", image_size=40)
        for path in ("torch-eager", "openvino")
    ]
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[1]["tiles_per_image"] == records[0]["tiles_per_image"] > BATCH
    assert records[1]["parity"]["errors"]["logits"] < 1e-5


def test_runtimes_predict_a_whole_volume_by_sliding_window_untimed(sweep) -> None:
    """The window task (a 3D U-Net, instance norm, leaky ReLU) through the CPU runtimes that take
    volumes: each one's predict over the patches, its forward through the gate."""
    volume = UNetSpec(width=4, depth=2, dims=3, norm="instance", activation="leaky_relu")
    sweep.timing = False
    sweep.cases = [
        RunConfig(path, volume, SIZE, BATCH, task="window", image_size=24)
        for path in ("torch-eager", "onnxruntime", "openvino")
    ]
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    assert [r["status"] for r in records] == ["ok", "ok", "ok"], records
    assert {r["tiles_per_image"] for r in records} == {8}  # 2 patches of 16 per axis over 24
    for record in records[1:]:
        assert record["parity"]["errors"]["logits"] < 1e-5


# -- torch-compile's freezing ------------------------------------------------------------------


def test_freezing_is_a_setting_of_compiled_inference_on_a_cpu_only() -> None:
    infer = RunConfig("torch-compile", SPEC, SIZE, BATCH, task="infer")
    assert run_config.freezing_applies(infer) and run_config.freezing_applies(
        infer.replace(task="tiled", image_size=64)
    )
    assert not run_config.freezing_applies(infer.replace(task="train"))
    assert not run_config.freezing_applies(infer.replace(path="torch-eager"))
    with pytest.raises(ValueError, match="freezing 'yes': expected one of auto, on, off"):
        infer.replace(freezing="yes")


def test_frozen_compiled_inference_computes_torch_eagers_forward() -> None:
    # test_gate's network and forms: the forward without freezing is the one compiled there
    gate_case = dict(batch=GATE_BATCH, size=GATE_SIZE, precision="fp32", device="cpu", task="infer")
    forms = dict(upconv="native", memory_format="contiguous")
    runner = make_runner("torch-compile", GATE_SPEC, freezing="on", **forms, **gate_case)
    assert runner.settings["freezing"] == "on"
    eager = make_runner("torch-eager", GATE_SPEC, **forms, **gate_case).outputs("infer")["logits"]
    assert err(runner.outputs("infer")["logits"], eager) < 1e-5
    seconds = runner.freezing_forms()  # the frozen forward reused, the other compiled
    assert set(seconds) == {"on", "off"} and all(s > 0 for s in seconds.values())
    train = _runner("torch-compile", task="train", upconv="native", memory_format="contiguous")
    assert "freezing" not in train.settings
