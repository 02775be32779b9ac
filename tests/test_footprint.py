"""The memory estimate and what the machine can give: work that cannot fit is refused before it starts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from bench import environment
from bench import footprint as bench_footprint
from bench.runners import RunConfig
from bench.sweep import memory_problem, needed_bytes
from impls import convert, export, footprint
from impls.spec import UNetSpec

ROOT = Path(__file__).parent.parent
GiB = 2**30


def _cgroup(tmp_path: Path, monkeypatch, membership: str, files: dict[str, str]) -> None:
    """A cgroup tree under tmp_path, as /proc/self/cgroup and /sys/fs/cgroup would show it."""
    (tmp_path / "cgroup").write_text(membership)
    for name, text in files.items():
        file = tmp_path / "fs" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    monkeypatch.setattr(footprint, "CGROUPS", tmp_path / "cgroup")
    monkeypatch.setattr(footprint, "CGROUP_ROOT", tmp_path / "fs")


def test_a_cgroup_v2_limit_bounds_what_is_available(tmp_path, monkeypatch) -> None:
    """The group's limit less its use, the page cache it would drop first given back; a parent's
    smaller limit wins; a group without a limit ("max") bounds nothing."""
    _cgroup(
        tmp_path,
        monkeypatch,
        "0::/jobs/one\n",
        {
            "jobs/one/memory.max": f"{8 * GiB}\n",
            "jobs/one/memory.current": f"{2 * GiB}\n",
            "jobs/one/memory.stat": f"anon {GiB}\ninactive_file {GiB}\n",
            "jobs/memory.max": "max\n",
        },
    )
    assert footprint._cgroup_headroom() == 7 * GiB
    (tmp_path / "fs" / "jobs" / "memory.max").write_text(f"{4 * GiB}\n")
    (tmp_path / "fs" / "jobs" / "memory.current").write_text(f"{3 * GiB}\n")
    (tmp_path / "fs" / "jobs" / "memory.stat").write_text("inactive_file 0\n")
    assert footprint._cgroup_headroom() == GiB


def test_a_cgroup_v1_limit_counts_and_no_limit_bounds_nothing(tmp_path, monkeypatch) -> None:
    files = {
        "memory/job/memory.limit_in_bytes": f"{6 * GiB}\n",
        "memory/job/memory.usage_in_bytes": f"{5 * GiB}\n",
        "memory/job/memory.stat": f"rss {GiB}\ntotal_inactive_file {GiB}\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit", page-rounded
    }
    _cgroup(tmp_path, monkeypatch, "4:memory:/job\n1:cpu:/\n", files)
    assert footprint._cgroup_headroom() == 2 * GiB
    (tmp_path / "cgroup").write_text("4:memory:/\n")
    assert footprint._cgroup_headroom() is None


def test_what_is_available_is_the_smaller_of_the_systems_and_the_cgroups(monkeypatch) -> None:
    system = psutil.virtual_memory().available
    monkeypatch.setattr(footprint, "_cgroup_headroom", lambda: GiB)
    assert footprint.available_bytes() == min(GiB, system)
    monkeypatch.setattr(footprint, "_cgroup_headroom", lambda: None)
    assert abs(footprint.available_bytes() - system) < system / 4  # read again: it moves


def test_the_estimate_grows_with_the_work() -> None:
    spec = UNetSpec()
    one = footprint.estimate_bytes(spec, 256, 1, task="train", kind="torch-eager")
    assert footprint.estimate_bytes(spec, 256, 4, task="train", kind="torch-eager") > one
    assert footprint.estimate_bytes(spec, 512, 1, task="train", kind="torch-eager") > one
    assert footprint.estimate_bytes(spec, 256, 1, task="infer", kind="torch-eager") < one
    assert footprint.feature_bytes(spec, (256, 512)) == pytest.approx(
        2 * footprint.feature_bytes(spec, 256), 0.01
    )
    for kind in footprint.KINDS:
        assert footprint.estimate_bytes(spec, 256, 1, task="infer", kind=kind) > 0


def test_a_torch_data_parallel_case_on_a_cpu_counts_every_process() -> None:
    """torchrun's processes share the CPU's memory; jax's one process holds the whole batch."""
    spec = UNetSpec(width=8, depth=2)
    one = needed_bytes(RunConfig("torch-eager", spec, 64, 2))
    assert needed_bytes(RunConfig("torch-eager", spec, 64, 4, devices=2)) == 2 * one
    assert needed_bytes(RunConfig("jax", spec, 64, 4, devices=2)) == needed_bytes(
        RunConfig("jax", spec, 64, 4)
    )


def test_a_case_that_cannot_fit_names_itself_and_the_memory(monkeypatch) -> None:
    monkeypatch.setattr(environment, "memory_bytes", lambda device: 3 * GiB)
    case = RunConfig("torch-eager", UNetSpec(), 1024, 16)
    assert re.fullmatch(
        r"train-torch-eager-1024px-b16-fp32 needs about [\d.]+ GiB \(an upper estimate\), more than the 3\.0 "
        r"GiB free here",
        memory_problem(case),
    )
    assert memory_problem(RunConfig("torch-eager", UNetSpec(width=4, depth=2), 32, 1)) is None


# -- the commands: refused before they start, one line, nothing changed ----------------------------


def test_an_export_that_cannot_fit_is_refused_before_it_starts(tmp_path) -> None:
    spec = UNetSpec(width=4, depth=2)
    checkpoint = tmp_path / "w.safetensors"
    convert.save(checkpoint, {n: np.ones(s, np.float32) for n, s in spec.param_shapes().items()}, spec)
    out = tmp_path / "w.onnx"
    out.write_bytes(b"an earlier export")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    command = [sys.executable, "-m", "impls.export", str(checkpoint), "--to", "onnx", str(out)]
    done = subprocess.run(
        [*command, "--batch", "100000", "--size", "1024", "1024", "--force"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert re.fullmatch(
        r"error: an export at batch 100000, 1024x1024 needs about [\d.]+ GiB \(an upper estimate\), more "
        r"than the [\d.]+ GiB free here: give a smaller --batch or --size",
        line,
    )
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_matrix_with_a_case_that_cannot_fit_is_refused_before_it_starts(tmp_path) -> None:
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--benchmark-only",
        "bench/test_unet.py",
        "-p",
        "no:cacheprovider",
    ]
    command += ["--sizes", "128,8192", "--batches", "64", f"--results-dir={results}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert re.fullmatch(
        r"ERROR: train-[a-z-]+-8192px-b64-fp32 needs about [\d.]+ GiB \(an upper estimate\), more than "
        r"the [\d.]+ GiB free here \(and \d+ other cases of the \d+\): choose smaller --sizes or --batches, "
        r"or free memory",
        line,
    )
    assert not results.exists()


def _documented(command: str) -> list[list[str]]:
    """Every documented command line that starts with ``command``, in README.md and docs/, its
    continuation lines joined and its comment cut."""
    found = []
    for file in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = file.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip().strip("`")
            if line.startswith(command) and "RUN_DIR" not in line and "..." not in line:
                found.append(shlex.split(line.split("#")[0]))
    return found


def test_no_documented_benchmark_command_is_refused_for_memory_here() -> None:
    """The default matrix and every README example (collected, as the main command checks them
    before it runs): none is refused for the memory it would need on this machine."""
    commands = _documented("pytest --benchmark-only")
    assert ["pytest", "--benchmark-only"] in commands  # the default matrix
    for words in commands:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *words[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "upper estimate" not in done.stdout + done.stderr, (words, done.stderr)


def test_no_documented_export_is_refused_for_memory_here(tmp_path) -> None:
    """Each README export, checked up to where it would start (impls.export._job: its memory
    included), on the default spec's checkpoint."""
    commands = _documented("python -m impls.export unet.safetensors")
    assert len(commands) >= 4
    spec = UNetSpec()
    checkpoint = tmp_path / "unet.safetensors"
    convert.save(checkpoint, {n: np.ones(s, np.float32) for n, s in spec.param_shapes().items()}, spec)
    for words in commands:
        route, out = words[words.index("--to") + 1], tmp_path / words[words.index("--to") + 2]
        torch_route = route == "aoti" or (route == "onnx" and "flax" not in words)
        size = words[words.index("--size") + 1 : words.index("--size") + 3] if "--size" in words else None
        export._job(
            checkpoint,
            out,
            batch=int(words[words.index("--batch") + 1]) if "--batch" in words else 1,
            size=None if size is None else tuple(map(int, size)),
            dynamic="--dynamic" in words,
            torch_route=torch_route,
            route=route,
            force=False,
        )


# -- the estimate's constants and its evidence: the committed measurements -------------------------

FOOTPRINTS = ROOT / "results"


def _measured(grid: str) -> list[dict]:
    (folder,) = sorted(FOOTPRINTS.glob(f"footprint-*-{grid}"))[-1:]
    return json.loads((folder / "measured.json").read_text())["records"]


def test_the_constants_are_those_the_calibration_grids_give() -> None:
    """impls/footprint.py's FITTED is what python -m bench.footprint --fit writes for the committed
    calibration and evidence runs: no constant set by hand."""
    assert bench_footprint.fitted(_measured("calibration") + _measured("evidence")) == footprint.FITTED


@pytest.mark.parametrize("grid", ["calibration", "evidence", "holdout"])
def test_the_estimate_errs_high_by_at_most_twice_on_every_measured_case(grid: str) -> None:
    """The bar, on the committed measurements: every case's estimate from 1x to 2x its peak; the
    holdout grid, measured after the constants were fitted, shares no case with the others."""
    found = bench_footprint.table(_measured(grid))
    assert found["error"].eq("").all(), found[found["error"].ne("")]
    ratios = found["estimate/measured"]
    assert ratios.between(1.0, 2.0).all(), found[~ratios.between(1.0, 2.0)]
    if grid == "holdout":
        fitted_to = bench_footprint.table(_measured("calibration") + _measured("evidence"))
        key = ["spec", "size", "batch", "task", "path"]
        assert found[key].merge(fitted_to[key]).empty


def test_the_measurements_read_a_workers_and_an_exports_peak(tmp_path) -> None:
    """bench.footprint's two measurements, on a tiny network: a peak each, and the table's ratio."""
    spec = UNetSpec(width=4, depth=2)
    worker = bench_footprint.measure(RunConfig("torch-eager", spec, 32, 1, task="infer"))
    exported = bench_footprint.measure_export("onnx", spec, 32, 2, tmp_path)
    for record in (worker, exported):
        assert "error" not in record and 50 * 2**20 < record["peak_bytes"] < 4 * GiB, record
    found = bench_footprint.table([worker, exported])
    assert list(found.task) == ["infer", "export"] and (found["estimate/measured"] > 0).all()
    assert (tmp_path / "unet.onnx").exists()  # checked against its source model, then kept
