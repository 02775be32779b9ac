"""Every case in worker processes: faults recorded and survived, caches that work, nothing left behind.

Faults are injected for real (tests/faults/, around the worker's commands): a
worker killed by a signal, one that exits, one whose allocation fails, one
that hangs; and a whole sweep stopped by SIGTERM, SIGINT or SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench import environment, report
from bench.keys import compile_folder_key
from bench.runners import RunConfig
from bench.sweep import CaseFailure, Sweep, process_worker
from bench.sweep.process_worker import OWNER_MARKER, ProcessWorker, leftover_processes
from bench.sweep.worker import WorkerError
from impls.spec import UNetSpec
from tests import faults
from tests.fakes import FakeBenchmark

ROOT = Path(__file__).parent.parent
SPEC = UNetSpec(width=4, depth=2)
SIZE, BATCH = 16, 2


def _case(path: str, task: str = "train") -> RunConfig:
    return RunConfig(path, SPEC, SIZE, BATCH, task=task)


def _run(sweep: Sweep, case: RunConfig) -> str:
    try:
        return sweep.run(case, FakeBenchmark())["status"]
    except CaseFailure as failure:
        return failure.status


def test_each_fault_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch) -> None:
    sweep = Sweep(
        progress_file=tmp_path / "progress.jsonl",
        compile_cache=tmp_path / "cache",
        case_timeout=15,  # the hang waits it out; a jax case's set-up takes about 5 s here
        timing=False,
    )
    expected = {
        "signal": ("crashed", "was killed by SIGSEGV during 'first_call'"),
        "exit": ("crashed", "exited with code 3 during 'first_call'"),
        "oom": ("out-of-memory", "MemoryError: Unable to allocate"),
        "hang": ("timeout", "did not answer 'first_call' within the case's time limit (--case-timeout)"),
    }
    for action in expected:
        faults.inject(monkeypatch, f"rank=0,path=jax,command=first_call,action={action}")
        assert _run(sweep, _case("jax")) == expected[action][0]
        assert _run(sweep, _case("torch-eager")) == "ok"  # the next case still runs
        assert leftover_processes() == []
    records = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == [s for status, _ in expected.values() for s in (status, "ok")]
    for record, (status, message) in zip(records[::2], expected.values(), strict=True):
        assert message in record["message"], record["message"]
        if status != "out-of-memory":  # the worker's own report, else the end of its log
            assert "injected fault" in record["message"], record["message"]


def test_a_kill_by_the_kernels_oom_killer_is_out_of_memory(tmp_path, monkeypatch) -> None:
    kills = iter(range(100))
    monkeypatch.setattr(process_worker, "oom_kills", lambda: next(kills))  # one more kill at every reading
    faults.inject(monkeypatch, "rank=0,command=noop,action=signal")
    worker = ProcessWorker(_case("torch-eager"), compile_cache=tmp_path)
    with worker, pytest.raises(WorkerError) as info:
        worker.call("noop")
    assert info.value.status == "out-of-memory"
    assert "killed by the kernel's OOM killer" in str(info.value)


def test_a_case_that_cannot_be_built_is_an_error_not_a_crash(tmp_path) -> None:
    broken = _case("torch-eager").replace(weights_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(WorkerError, match="failed build the case") as info:
        ProcessWorker(broken, compile_cache=tmp_path)
    assert info.value.status == "error"
    assert leftover_processes() == []


@pytest.mark.parametrize("path", ["torch-compile", "jax"])
def test_the_cached_compile_is_clearly_below_the_cold_one(tmp_path, path: str) -> None:
    """Each in a fresh worker; the second finds what the first wrote. A cache that silently
    stays off (as JAX's did when its settings came after `import jax`) fails here."""
    seconds = []
    # The forms pinned: "auto" times them in each worker and may pick the other one, another graph,
    # each time (the sweep pins them for a case's workers). Depth 1: the same kinds of layer, a
    # quarter less to compile.
    case = RunConfig(
        path, UNetSpec(width=4, depth=1), SIZE, BATCH, upconv="native", memory_format="contiguous"
    )
    for _ in range(2):
        with ProcessWorker(case, compile_cache=tmp_path) as worker:
            seconds.append(worker.call("first_call"))
    cold, cached = seconds
    assert cached < 0.6 * cold, f"{path}: cold {cold:.2f} s, from the caches {cached:.2f} s"


def test_a_worker_imports_only_its_own_framework(tmp_path) -> None:
    weights = tmp_path / "weights.safetensors"
    with ProcessWorker(_case("torch-eager"), compile_cache=tmp_path) as worker:
        worker.call("write_initial_weights", str(weights))
        assert worker.call("modules") == ["torch"]
    with ProcessWorker(_case("jax").replace(weights_file=str(weights)), compile_cache=tmp_path) as worker:
        assert worker.call("modules") == ["jax"]


def test_every_worker_runs_with_the_allocator_settings_the_run_records(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "268435456")  # a user's own value is kept
    recorded = environment.describe("cpu")["allocator"]
    assert recorded == {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": "268435456"}
    with ProcessWorker(_case("torch-eager"), compile_cache=tmp_path):
        (process,) = leftover_processes()  # the live worker, started by this process
        seen = process.environ()
    assert {name: seen.get(name) for name in recorded} == recorded


# -- a whole sweep stopped from outside --------------------------------------------------


def _benchmark_command(tmp_path: Path, paths: str, sizes: str) -> list[str]:
    """The main command, on a tiny network, writing only under ``tmp_path``."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "bench/test_unet.py::test_unet",
        f"--paths={paths}",
        "--tasks=infer",
        f"--sizes={sizes}",
        f"--batches={BATCH}",
        "--width=4",
        "--depth=2",
        "--device=cpu",
        "--benchmark-max-time=0.05",
        "--warm-up=0",
        # what is tested is where the cases go, not how they compare: one worker per case, the
        # forms pinned (no throw-away runners timing them)
        "--replicates=1",
        "--max-replicates=1",
        "--upconv=native",
        "--memory-format=contiguous",
        f"--results-dir={tmp_path / 'results'}",
        f"--compile-cache={tmp_path / 'cache'}",
    ]


def _sweep(tmp_path: Path) -> subprocess.Popen:
    """A benchmark run of two groups of two cases; the second group's jax case hangs at its first call."""
    fault = f"rank=0,path=jax,size={2 * SIZE},command=first_call,action=hang"
    env = {**os.environ, **faults.environment(fault)}
    command = _benchmark_command(tmp_path, "torch-eager,jax", f"{SIZE},{2 * SIZE}")
    # Ctrl-C's default action restored: a shell starts background jobs (`make test &`) with SIGINT
    # ignored, which their children inherit, and the SIGINT case would then wait in vain.
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_the_hang(process: subprocess.Popen, tmp_path: Path) -> Path:
    """The run folder, once the first group is recorded and the second one's jax worker hangs."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        progress = list((tmp_path / "results").glob("*/progress.jsonl"))
        if progress and progress[0].read_text().strip() and _hung_worker(process.pid):
            time.sleep(2)  # its first call sent, and not answered
            return progress[0].parent
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.5)
    process.kill()
    raise AssertionError("the first group was never recorded, or the second's jax worker never started")


def _hung_worker(pid: int) -> bool:
    """Whether the second group's jax worker (the one that hangs at its first call) is running."""
    second = ('"path": "jax"', f'"size": {2 * SIZE},')
    for worker in _workers_of(pid):
        with contextlib.suppress(psutil.Error):
            if all(part in " ".join(worker.cmdline()) for part in second):
                return True
    return False


def _workers_of(pid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(OWNER_MARKER) == str(pid):
                found.append(process)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_sweep_records_the_case_and_writes_its_report(tmp_path, stop) -> None:
    process = _sweep(tmp_path)
    run_dir = _wait_for_the_hang(process, tmp_path)
    assert _workers_of(process.pid), "the hung case's worker should be running"
    process.send_signal(stop)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0
    records = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    # the group in progress: the case set up and waiting for its rounds, and the hung one
    assert sorted((r["case"]["size"], r["case"]["path"], r["status"]) for r in records) == [
        (SIZE, "jax", "ok"),
        (SIZE, "torch-eager", "ok"),
        (2 * SIZE, "jax", "interrupted"),
        (2 * SIZE, "torch-eager", "interrupted"),
    ]
    saved = json.loads((run_dir / "benchmark.json").read_text())
    assert [f["status"] for f in saved["unet_bench"]["failures"]] == ["interrupted"] * 2
    assert "| interrupted |" in (run_dir / "report.md").read_text(), output[-3000:]
    assert _workers_of(process.pid) == []


def test_after_a_sigkill_nothing_is_left_and_the_report_is_rebuilt(tmp_path) -> None:
    process = _sweep(tmp_path)
    run_dir = _wait_for_the_hang(process, tmp_path)
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 20  # the workers die with their parent (PR_SET_PDEATHSIG)
    while _workers_of(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workers_of(process.pid) == []
    assert not (run_dir / "benchmark.json").exists()
    assert report.main([str(run_dir)]) == 0
    text = (run_dir / "report.md").read_text()
    assert "Rebuilt from progress.jsonl" in text
    assert "## infer: images per second" in text  # the first group, measured before the kill
    assert sorted(report.load(run_dir)[0].path.tolist()) == ["jax", "torch-eager"]


# -- compile caches: one folder per case, cold figures reused by a later run --------------


def test_a_run_whose_probes_are_killed_measures_its_cases_without_their_figures(tmp_path) -> None:
    """Every run-level probe (python -m bench.environment: torch's facts, the device's peak) killed by
    SIGKILL, by a sitecustomize that only those processes act on: the run still makes its folder,
    measures its case and writes its report, with the probes' failures recorded and said once."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "if sys.orig_argv[1:3] == ['-m', 'bench.environment']:\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        _benchmark_command(tmp_path, "torch-eager", str(SIZE)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (p for p in (tmp_path / "results").iterdir() if p.is_dir())
    recorded = json.loads((run_dir / "environment.json").read_text())
    killed = "-m bench.environment torch cpu failed (killed by SIGKILL)"
    assert recorded["torch_facts_problem"] == killed
    assert done.stdout.count(killed) == 1  # in the run's header
    (record,) = map(json.loads, (run_dir / "progress.jsonl").read_text().splitlines())
    assert record["status"] == "ok" and record["utilization"] is None
    assert (
        record["device_peak_problem"] == "-m bench.environment peak cpu fp32 ieee failed (killed by SIGKILL)"
    )
    assert done.stdout.count("the device's peak could not be measured") == 1
    assert "(peak not measured)" in (run_dir / "report.md").read_text()
    assert leftover_processes() == []


def test_each_case_has_its_own_compile_folder() -> None:
    infer = _case("jax", "infer")
    keys = {
        "infer": compile_folder_key(infer, "cpu"),
        "tiled": compile_folder_key(infer.replace(task="tiled", image_size=64), "cpu"),
        "train": compile_folder_key(_case("jax"), "cpu"),
        "torch": compile_folder_key(infer.replace(path="torch-compile"), "cpu"),
        "other file": compile_folder_key(infer.replace(weights_file="/elsewhere.safetensors"), "cpu"),
        "other device": compile_folder_key(infer, "another cpu"),
    }
    assert keys["infer"] == keys["other file"]
    assert len({keys[k] for k in ("infer", "tiled", "train", "torch", "other device")}) == 5


def test_a_second_run_reuses_the_measured_cold_compile(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("bench.environment.peak_tflops", lambda *a: 1.0)  # not what is tested here
    records = []
    for _ in range(2):
        sweep = Sweep(
            compile_cache=tmp_path / "cache",
            timing=True,
            min_rounds=2,
            max_time=0.01,
            warm_up=0.0,
            replicates=1,
        )
        # the up-conv form pinned: the cold worker compiles only the case's own graph
        records.append(sweep.run(_case("jax", "infer").replace(upconv="native"), FakeBenchmark()))
    first, second = records
    assert (first["compile_cold_reused"], second["compile_cold_reused"]) == (False, True)
    assert second["compile_seconds_cold"] == pytest.approx(first["compile_seconds_cold"])
    assert second["compile_seconds_cached"] < first["compile_seconds_cold"]


def test_a_worker_that_cannot_start_says_why_in_its_first_line(tmp_path, monkeypatch) -> None:
    """An unknown flag in XLA_FLAGS aborts the jax worker: its first line, the one the console shows,
    names the flag, not only the signal."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_no_such_flag")
    with pytest.raises(WorkerError) as info:
        ProcessWorker(_case("jax"), compile_cache=tmp_path)
    first = str(info.value).splitlines()[0]
    assert info.value.status == "crashed"
    assert first.endswith(": Unknown flag in XLA_FLAGS: --xla_no_such_flag"), first
    assert leftover_processes() == []
