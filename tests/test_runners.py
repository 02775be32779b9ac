"""The runners behind the benchmarks: the interface, the parity gate, recorded failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import gate, measure, report
from bench.measure import Case, CaseFailure, Session
from bench.runners import make_runner
from impls import convert
from impls.spec import UNetSpec

SPEC = UNetSpec(width=4, depth=2)
SIZE, BATCH = 16, 2


def _outputs(path: str, task: str, precision: str = "fp32", upconv: str = "auto") -> dict[str, np.ndarray]:
    runner = make_runner(path, SPEC, batch=BATCH, size=SIZE, precision=precision, device="cpu", upconv=upconv)
    return runner.outputs(task)


@pytest.fixture(scope="module")
def references() -> dict:
    """torch eager fp32 and bf16 outputs, per task."""
    return {
        (task, precision): _outputs("torch-eager", task, precision, upconv="native")
        for task in ("infer", "train")
        for precision in ("fp32", "bf16")
    }


@pytest.mark.parametrize("task", ["infer", "train"])
@pytest.mark.parametrize(
    ("path", "precision", "upconv"),
    [
        ("torch-eager", "fp32", "matmul"),
        ("jax", "fp32", "native"),
        ("jax", "fp32", "matmul"),
        ("torch-eager", "bf16", "auto"),
        ("jax", "bf16", "auto"),
    ],
)
def test_paths_pass_the_parity_gate(references, path: str, precision: str, upconv: str, task: str) -> None:
    outputs = _outputs(path, task, precision, upconv)
    baseline = references[(task, precision)] if precision != "fp32" else None
    result = gate.check(outputs, references[(task, "fp32")], baseline)
    assert result.passed, result.describe()
    assert set(outputs) == ({"logits"} if task == "infer" else {"logits", "loss"})
    assert outputs["logits"].shape == (BATCH, SPEC.num_classes, SIZE, SIZE)


def test_torch_compile_passes_the_parity_gate(references) -> None:
    result = gate.check(_outputs("torch-compile", "infer"), references[("infer", "fp32")])
    assert result.passed, result.describe()


def test_a_wrong_path_fails_the_gate(references, monkeypatch) -> None:
    """JAX given the transposed-conv kernels without their flip: the known trap, caught."""
    right = convert._to_flax_layout

    def unflipped(name, array, spec):
        return array.transpose(2, 3, 0, 1) if name.endswith("upconv.weight") else right(name, array, spec)

    monkeypatch.setattr(convert, "_to_flax_layout", unflipped)
    result = gate.check(_outputs("jax", "infer", upconv="native"), references[("infer", "fp32")])
    assert not result.passed
    assert result.errors["logits"] > 10 * gate.FP32_TOLERANCE


def test_train_step_trains_and_infer_does_not() -> None:
    runner = make_runner("jax", SPEC, batch=BATCH, size=SIZE, precision="fp32", device="cpu")
    before = runner.outputs("infer")["logits"]
    runner.infer()
    runner.infer()
    assert np.array_equal(runner.outputs("infer")["logits"], before)
    losses = runner.outputs("train")["loss"]
    assert losses[1] < losses[0]  # one Adam step on the same batch lowers its loss


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(path="mxnet"), "path 'mxnet': expected one of torch-eager"),
        (dict(precision="fp16"), "precision 'fp16': expected one of fp32, bf16"),
        (dict(device="tpu"), "device 'tpu'"),
        (dict(path="torch-compile-reduce-overhead"), "needs a CUDA device"),
        (dict(size=18), "height 18 is not a valid input size .* nearest valid: 16 and 20"),
        (dict(upconv="fft"), "upconv 'fft'"),
    ],
)
def test_make_runner_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    args = dict(path="torch-eager", batch=BATCH, size=SIZE, precision="fp32", device="cpu") | kwargs
    with pytest.raises(ValueError, match=match):
        make_runner(args.pop("path"), SPEC, **args)


# -- a failing case is recorded and the sweep goes on ------------------------------


class _Benchmark:
    """Stands in for pytest-benchmark's fixture with --benchmark-disable: one untimed call."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.stats = None

    def pedantic(self, fn, rounds: int, iterations: int) -> None:
        fn()


class _FakeRunner:
    device_name = "cpu"

    def __init__(self, outputs: dict, fail_with: BaseException | None) -> None:
        self._outputs, self._fail_with = outputs, fail_with
        self.settings: dict = {}

    def train_step(self) -> None:
        if self._fail_with:
            raise self._fail_with

    infer = train_step

    def outputs(self, task: str) -> dict:
        return self._outputs

    def reset_compilation(self) -> None: ...

    def reset_peak_memory(self) -> None: ...

    def peak_memory_bytes(self) -> int:
        return 1


def test_failed_cases_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch) -> None:
    reference = {"logits": np.ones((2, 2, 16, 16))}
    behaviour = {
        "torch-compile": (reference, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")),
        "jax": ({"logits": -np.ones((2, 2, 16, 16))}, None),  # computes something else
        "torch-eager": (reference, None),
    }
    monkeypatch.setattr(measure, "make_runner", lambda path, *a, **k: _FakeRunner(*behaviour[path]))
    session = Session(SPEC, progress=tmp_path / "progress.jsonl")
    cases = [
        Case(path, "train", SIZE, BATCH, "fp32", "cpu") for path in ("torch-compile", "jax", "torch-eager")
    ]
    outcomes = []
    for case in cases:
        try:
            outcomes.append(session.run(case, _Benchmark())["status"])
        except CaseFailure as failure:
            outcomes.append(failure.status)
    assert outcomes == ["out-of-memory", "parity-failed", "ok"]
    lines = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == outcomes
    assert "CUDA out of memory" in lines[0]["message"]
    assert "parity gate: jax differs from torch eager fp32: logits err 2.00e+00" in lines[1]["message"]
    assert lines[2]["gflop_per_image"] > 0


def test_an_interrupted_case_is_recorded_and_the_report_still_written(tmp_path, monkeypatch) -> None:
    """A run stopped mid-case (Ctrl-C, a time limit) keeps what it measured, and says which case it cut."""
    stopped = _FakeRunner({"logits": np.ones((2, 2, 16, 16))}, KeyboardInterrupt())
    monkeypatch.setattr(measure, "make_runner", lambda *a, **k: stopped)
    session = Session(SPEC, progress=tmp_path / "progress.jsonl")
    with pytest.raises(KeyboardInterrupt):
        session.run(Case("jax", "train", SIZE, BATCH, "fp32", "cpu"), _Benchmark())
    assert [r["status"] for r in session.records] == ["interrupted"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "benchmark.json").write_text(
        json.dumps({"benchmarks": [], "unet_bench": {"failures": session.records}}, default=str)
    )
    text = report.write_run(run_dir)
    assert "| jax    | train  |     16 |       2 | fp32        | cpu" in text
    assert "| interrupted | the run was stopped during this case |" in text
