"""One run over several sessions (--resume), and make bench-gpu, which is built on it: on a CPU."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).parent.parent
TINY = [
    "--width=4",
    "--depth=2",
    "--batches=2",
    "--device=cpu",
    "--benchmark-max-time=0.05",
    "--warm-up=0",
    "--replicates=1",  # one worker per case and the forms pinned: how the cases compare is not tested here
    "--max-replicates=1",
    "--upconv=native",
    "--memory-format=contiguous",
]


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--benchmark-only"]
    command += ["bench/test_unet.py::test_unet", "--paths=torch-eager", "--tasks=infer", *TINY]
    command += [f"--results-dir={tmp_path / 'results'}", f"--compile-cache={tmp_path / 'cache'}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _statuses(run_dir: Path) -> list[tuple[str, str]]:
    lines = (run_dir / "progress.jsonl").read_text().splitlines()
    return [(record["id"], record["status"]) for record in map(json.loads, lines)]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A run of one case, then resumed with a second size and stopped by --max-minutes before it
    began: the second case is recorded as skipped."""
    tmp_path = tmp_path_factory.mktemp("resume")
    result = _pytest(tmp_path, "--sizes=16")
    assert result.returncode == 0, result.stdout[-3000:]
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    result = _pytest(tmp_path, "--sizes=16,32", "--max-minutes=0.001", f"--resume={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert [status for _, status in _statuses(run_dir)] == ["ok", "skipped"]
    return run_dir


def test_a_resumed_run_measures_what_is_left_and_reports_one_run(stopped, tmp_path) -> None:
    run_dir = tmp_path / stopped.name
    shutil.copytree(stopped, run_dir)
    result = _pytest(tmp_path, "--sizes=16,32", f"--resume={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[1/1] infer-torch-eager-32px-b2-fp32: ok" in result.stdout  # the skipped case, alone
    assert [status for _, status in _statuses(run_dir)] == ["ok", "skipped", "ok"]
    benchmarks, failures = report.read_records(run_dir)
    assert sorted(b["extra_info"]["size"] for b in benchmarks) == [16, 32] and failures == []
    assert (run_dir / "benchmark-session-1.json").exists()  # the first session's, kept
    sizes = re.findall(r"^\|\s+(\d+) \|\s+2 \| fp32", (run_dir / "report.md").read_text(), re.MULTILINE)
    assert {"16", "32"} <= set(sizes)  # one run: both sessions' cases in its tables
    again = _pytest(tmp_path, "--sizes=16,32", f"--resume={run_dir}")
    assert again.returncode == 0 and "nothing left to measure" in again.stdout, again.stdout[-3000:]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda env: env.update(engine_hash="0123456789abcdef"), "engine '0123456789abcdef' then"),
        (lambda env: env["versions"].update(torch="1.0"), "torch 1.0 then"),
        (lambda env: env.pop("engine_hash"), "recorded no engine hash"),
    ],
    ids=["engine", "versions", "older-engine"],
)
def test_a_run_measured_otherwise_is_not_resumed(stopped, tmp_path, change, message: str) -> None:
    run_dir = tmp_path / stopped.name
    shutil.copytree(stopped, run_dir)
    environment = json.loads((run_dir / "environment.json").read_text())
    change(environment)
    (run_dir / "environment.json").write_text(json.dumps(environment))
    result = _pytest(tmp_path, "--sizes=16,32", f"--resume={run_dir}")
    assert result.returncode == 4 and message in result.stderr and "start a new run" in result.stderr, (
        result.stderr
    )
    assert [status for _, status in _statuses(run_dir)] == ["ok", "skipped"]  # untouched


def test_resume_names_a_run_folder(tmp_path) -> None:
    result = _pytest(tmp_path, "--sizes=16", f"--resume={tmp_path}")
    assert result.returncode == 4 and "not a run folder" in result.stderr, result.stderr


@pytest.mark.parametrize("dims", [2, 3])
def test_make_bench_gpu_writes_one_run_of_both_sessions(tmp_path, dims) -> None:
    """The recipe as on a GPU, on a CPU and a small U-Net (in 3D too, as GPU_MATRIX="--dims 3 ..."
    asks for volumes): bf16 train and infer, then fp32 infer into the same folder."""
    # What is proved is where the sessions' cases go, not how they compare: one worker per case
    # (--max-replicates 1: no extra workers while torch-eager and jax are undecided, as they are on
    # a CPU), the forms pinned (no throw-away runners timing them) and the smallest U-Net.
    matrix = "--sizes 16 --batches 2 --width 4 --depth 2 --benchmark-max-time 0.05 --warm-up 0 "
    matrix += "--replicates 1 --max-replicates 1 --upconv native --memory-format contiguous "
    matrix += f"--compile-cache {tmp_path / 'cache'} --dims {dims}"
    variables = [
        f"GPU_PYTHON={sys.executable}",
        "GPU_DEVICE=cpu",
        "GPU_PATHS=torch-eager,jax",
        f"GPU_MATRIX={matrix}",
        f"GPU_RESULTS={tmp_path / 'results'}",
    ]
    result = subprocess.run(
        ["make", "--no-print-directory", "bench-gpu", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    benchmarks, _ = report.read_records(run_dir)
    found = sorted(
        (b["extra_info"]["task"], b["extra_info"]["precision"], b["extra_info"]["path"]) for b in benchmarks
    )
    assert {b["extra_info"]["dims"] for b in benchmarks} == {dims}
    assert found == sorted(
        (task, precision, path)
        for task, precision in (("train", "bf16"), ("infer", "bf16"), ("infer", "fp32"))
        for path in ("torch-eager", "jax")
    )
    assert f"make bench-gpu: the run is {run_dir}" in result.stdout
