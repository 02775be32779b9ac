"""The report, built from a stored run of an older engine (tests/data/tiny-cpu-run, made by
`pytest --benchmark-only`), and from synthetic runs of the current one (interleaved rounds)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import records, report, stats
from bench.report import markdown, tables, verdicts
from bench.report.cases import INTERNAL
from bench.report.write import stale_reports

STORED = Path(__file__).parent / "data" / "tiny-cpu-run"
ROOT = Path(__file__).resolve().parent.parent
# torch-plain, the fastest here, must still never be named in a verdict.
SPEEDUPS = {"torch-eager": 1.0, "torch-plain": 2.0, "torch-compile": 1.3, "jax": 0.5}
GROUPS = [("train", 64, 1), ("train", 64, 2), ("infer", 64, 1), ("infer", 64, 2)]


def _record(path: str, task: str, size: int, batch: int, seconds: np.ndarray) -> dict:
    """A progress.jsonl record of the current engine, a round per block."""
    median = float(np.median(seconds))
    case = dict(path=path, task=task, size=size, batch=batch, precision="fp32", device="cpu")
    return {
        **case,
        "case": case,
        "id": f"{task}-{path}-{size}px-b{batch}-fp32",
        "group": f"{task} {size}px b{batch} fp32 cpu",
        "status": "ok",
        "schedule": "interleaved",
        "device_name": "Fake CPU",
        "devices": None,
        "scaling": None,
        "gflop_per_image": 1.0,
        "images_per_second": batch / median,
        "tflops": batch / median / 1e3,
        "utilization": 0.5,
        "peak_memory_bytes": 2**30,
        "compile_seconds_cold": 30.0 if path == "torch-compile" else 0.1,
        "compile_seconds_cached": 1.0,
        "compile_cold_reused": False,
        "settings": {"framework": "jax" if path.startswith("jax") else "torch", "memory": "VmHWM"},
        "rounds_seconds": [float(x) for x in seconds],
        "round_blocks": list(range(len(seconds))),
        "stats": {"median": median, "iqr": 0.001, "min": float(seconds.min()), "max": float(seconds.max())}
        | {"mean": float(seconds.mean()), "stddev": float(seconds.std()), "rounds": len(seconds)},
    }


def fake_run(
    folder: Path,
    speedups: dict[tuple, dict[str, float]] | None = None,
    blocks: int = 12,
    workers: int = 1,
    luck: float = 0.04,
) -> Path:
    """A run folder of the current engine (progress.jsonl, environment.json): per group of GROUPS,
    every path's rounds ``speedups[group][path]`` times faster than torch-eager's 0.1 s (SPEEDUPS
    unless given), each block's drift falling on all of them; with several ``workers``, each worker
    of each path has a luck of its own (``luck``, lognormal)."""
    folder.mkdir(parents=True)
    records = []
    for number, group in enumerate(GROUPS):
        rng = np.random.default_rng(number)
        drift = rng.uniform(1.0, 1.3, blocks)
        worker = np.arange(blocks) * workers // blocks
        for path, speedup in (speedups or {}).get(group, SPEEDUPS).items():
            noise = 1 + 0.002 * rng.standard_normal(blocks)
            share = rng.lognormal(0.0, luck, workers)[worker] if workers > 1 else 1.0
            record = _record(path, *group, 0.1 / speedup * drift * noise * share)
            if workers > 1:
                record["round_workers"] = [int(w) for w in worker]
            records.append(record)
    (folder / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    environment = {"device": "cpu", "device_name": "Fake CPU", "versions": {"python": "3.11.7", "torch": "2"}}
    (folder / "environment.json").write_text(json.dumps(environment))
    return folder


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(STORED, target)
    return target


def test_write_run_makes_tables_plots_and_verdicts(run_dir: Path) -> None:
    text = report.write_run(run_dir)
    for name in ("report.md", "cases.csv", "throughput-train.png", "throughput-infer.png"):
        assert (run_dir / name).stat().st_size > 0, name
    cases = pd.read_csv(run_dir / "cases.csv")
    assert len(cases) == 2 * 2 * 2 * 2 * 2  # paths x tasks x sizes x batches x precisions
    assert {"img_per_s", "median_ms", "iqr_ms", "peak_memory_mib", "compile_cold_s", "utilization"} <= set(
        cases
    )
    assert not set(INTERNAL) & set(cases)  # rounds and spreads stay out of the table
    assert "## Which to pick" in text
    assert "No verdict: this run has no interleaved rounds (older engine)." in text
    assert "## train: images per second (speed-up against torch-eager)" in text  # no intervals
    assert "| size |" in text.replace("   ", " ").replace("  ", " ")


def test_speedups_are_against_torch_eager(run_dir: Path) -> None:
    measured = report.load(run_dir)[0].set_index(["task", "size", "batch", "precision", "path"])
    np.testing.assert_allclose(measured.xs("torch-eager", level="path")["speedup"], 1.0)
    eager, jax = (measured.loc[("train", 32, 2, "fp32", path)] for path in ("torch-eager", "jax"))
    assert jax.speedup == pytest.approx(jax.img_per_s / eager.img_per_s)
    assert np.isnan(jax.speedup_low)  # an older engine's run: no interval


def test_break_even_steps() -> None:
    measured = pd.DataFrame(
        {
            "path": ["torch-eager", "fast", "slow"],
            "task": "train",
            "size": 64,
            "batch": 2,
            "precision": "fp32",
            "median_ms": [200.0, 100.0, 400.0],
            "speedup": [1.0, 2.0, 0.5],
            "speedup_low": [np.nan, 1.5, 0.4],
            "speedup_high": [np.nan, 3.0, 1.2],
            "compile_cold_s": [0.0, 30.0, 1.0],
        }
    )
    steps = tables.break_even_steps(measured, "train")
    assert steps.loc[(64, 2, "fp32"), "fast"] == 300  # 30 s / 0.1 s a step
    assert steps.loc[(64, 2, "fp32"), "slow"] == np.inf
    text = tables.break_even_table(measured, "train").loc[(64, 2, "fp32")]
    # fast: 30 s over 0.2 s x (1 - 1/3) at best, x (1 - 1/1.5) at worst; slow: never, or 30 steps at best
    assert text["fast"] == "300 [225, 450]"
    assert text["slow"] == "never [30, never]"
    assert (
        tables.break_even_table(measured.assign(speedup_high=[np.nan, 3.0, 0.9]), "train").loc[
            (64, 2, "fp32"), "slow"
        ]
        == "never"
    )  # no saving anywhere in its interval


def test_failures_are_reported(run_dir: Path) -> None:
    data = json.loads((run_dir / "benchmark.json").read_text())
    case = dict(path="jax", task="train", size=1024, batch=64, precision="fp32", device="cpu")
    data["unet_bench"]["failures"] = [
        {"case": case, "status": "out-of-memory", "message": "RESOURCE_EXHAUSTED"}
    ]
    (run_dir / "benchmark.json").write_text(json.dumps(data))
    text = report.write_run(run_dir)
    assert "## Cases without a number" in text and "out-of-memory" in text
    assert (run_dir / "failures.csv").exists()


def test_merge_runs_across_devices(run_dir: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(STORED, other)
    data = json.loads((other / "benchmark.json").read_text())
    for bench in data["benchmarks"]:
        bench["extra_info"]["device_name"] = "another device"
    (other / "benchmark.json").write_text(json.dumps(data))
    assert report.main([str(run_dir), str(other), "--out", str(tmp_path / "merged")]) == 0
    table = pd.read_csv(tmp_path / "merged" / "cross-device.csv")
    assert set(table.device_name) == {"AMD EPYC (2 cores)", "another device"}
    assert "Images per second across devices" in capsys.readouterr().out


def test_cli_refuses_a_folder_without_a_run(tmp_path: Path, capsys) -> None:
    for argv in ([str(tmp_path)], ["--compare", str(fake_run(tmp_path / "a")), str(tmp_path / "nothing")]):
        assert report.main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "not a run folder" in error, error


def test_scaling_table_speedup_and_efficiency() -> None:
    rows = [
        # weak: 2 images per device; strong: 4 images in all
        ("weak", 1, 2, 10.0),
        ("weak", 2, 4, 18.0),
        ("strong", 1, 4, 12.0),
        ("strong", 2, 4, 15.0),
    ]
    measured = pd.DataFrame(
        [
            {
                "path": "jax",
                "task": "train",
                "size": 64,
                "precision": "fp32",
                "scaling": mode,
                "devices": float(n),
                "batch": batch,
                "img_per_s": rate,
            }
            for mode, n, batch, rate in rows
        ]
    )
    table = tables.scaling_table(measured).set_index(["scaling", "devices"])
    assert table.loc[("weak", 2.0), "speedup"] == pytest.approx(1.8)
    assert table.loc[("weak", 2.0), "efficiency"] == pytest.approx(0.9)
    assert table.loc[("strong", 2.0), "per_device_batch"] == 2
    assert table.loc[("strong", 2.0), "efficiency"] == pytest.approx(15 / 12 / 2)


def test_a_case_above_the_devices_peak_is_marked_suspect(run_dir: Path) -> None:
    """As torch's fp32 training at 124-131% of the fp32 peak, when its backward ran in TF32."""
    data = json.loads((run_dir / "benchmark.json").read_text())
    bench = next(b for b in data["benchmarks"] if b["extra_info"].get("path") == "torch-eager")
    bench["extra_info"]["utilization"] = 1.3
    (run_dir / "benchmark.json").write_text(json.dumps(data))
    text = report.write_run(run_dir)
    assert text.count("SUSPECT") == 1 + text.count("SUSPECT:")
    assert "(130%) SUSPECT" in text


def test_reused_cold_compiles_are_marked(run_dir: Path) -> None:
    data = json.loads((run_dir / "benchmark.json").read_text())
    for bench in data["benchmarks"]:
        bench["extra_info"]["compile_cold_reused"] = bench["extra_info"].get("path") == "jax"
    (run_dir / "benchmark.json").write_text(json.dumps(data))
    text = report.write_run(run_dir)
    section = text.split("## train: compile seconds")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "fp32" in line]
    assert rows and all(row.count("(reused)") == 1 for row in rows)  # the jax column only


def test_the_report_is_rebuilt_from_progress_without_benchmark_json(run_dir: Path) -> None:
    """After a SIGKILL: progress.jsonl's records alone make the same tables."""
    data = json.loads((run_dir / "benchmark.json").read_text())
    records = [{**b["extra_info"], "status": "ok", "stats": b["stats"]} for b in data["benchmarks"]]
    records = [r for r in records if "images_per_second" in r]
    records.append(
        {"case": {"path": "jax", "task": "infer"}, "id": "x", "status": "crashed", "message": "SIGSEGV"}
    )
    (run_dir / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before = report.load(run_dir)[0]
    (run_dir / "benchmark.json").unlink()
    after, failures, _ = report.load(run_dir)
    pd.testing.assert_frame_equal(before, after)
    assert failures.status.tolist() == ["crashed"]
    assert "Rebuilt from progress.jsonl" in report.write_run(run_dir)


# -- the current engine: interleaved rounds, intervals, verdicts ---------------------------------


def test_tables_show_speedups_with_intervals_and_plain_paths_only_there(tmp_path: Path) -> None:
    text = report.write_run(fake_run(tmp_path / "run"))
    table = text.split("## train: images per second")[1].split("##")[0]
    header = [cell.strip() for cell in table.splitlines()[2].split("|")[4:-1]]
    assert header == ["torch-eager", "torch-plain", "torch-compile", "jax"]
    cells = re.findall(r"\((\d\.\d\dx \[\d\.\d\d, \d\.\d\d\])\)", table)
    assert len(cells) == 2 * 3  # two cases, three paths against torch-eager
    assert all(stats.Interval(*map(float, re.findall(r"\d\.\d\d", c))).known for c in cells)
    # torch-eager's milliseconds: the median, its interval, the IQR
    assert re.search(r"\| 1\d\d \[1\d\d, 1\d\d\] \(1\.0\) ", text)
    verdict = text.split("## Which to pick")[1].split("## train")[0]
    assert "- **train, fp32**: 2 groups: winner in 2; 4 of 4 comparisons decided." in verdict
    assert "- **infer, fp32**: 2 groups: winner in 2; 4 of 4 comparisons decided." in verdict
    bullets, plain = verdict.split("in no verdict.")[1].split("### Against plainly written references")
    assert "torch-plain" not in bullets
    # torch-plain runs 2x torch-eager's speed: the project's torch-eager at half of it, outside the margin
    assert re.search(
        r"- \*\*train 64px b1 fp32\*\*: torch-eager 0\.50x \[0\.\d\d, 0\.\d\d\] slower against torch-plain",
        plain,
    )
    # 30 s of compiling against about 0.12 s x (1 - 1/1.3) saved per step
    winner = (
        r"64px b1: torch-compile faster than every other path by more than 5% \(torch-eager "
        r"0\.7\dx \[0\.\d\d, 0\.\d\d\] slower; jax 0\.3\dx \[0\.\d\d, 0\.\d\d\] slower\); "
    )
    assert re.search(winner + r"its compile pays back after 1\d{3} \[1\d{3}, 1\d{3}\] train steps", verdict)


def test_a_path_with_only_its_plain_reference_has_no_verdict_but_its_comparison(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", {group: {"jax": 1.0, "jax-plain": 1.0} for group in GROUPS})
    measured = report.load(run)[0]
    assert verdicts.verdicts(measured)[0] == "- **train, fp32**: no verdict: fewer than two paths to compare."
    lines = verdicts.plain_lines(measured)
    assert len(lines) == len(GROUPS)
    assert re.fullmatch(
        r"- \*\*train 64px b1 fp32\*\*: jax 1\.0\dx \[[01]\.\d\d, 1\.0\d\] equivalent against jax-plain",
        lines[0],
    )
    assert not tables.throughput_table(measured, "train").stack().str.endswith("fastest").any()


def test_a_group_within_the_margin_is_equivalent(tmp_path: Path) -> None:
    level = {"torch-eager": 1.0, "torch-compile": 1.005, "jax": 0.5}
    run = fake_run(tmp_path / "run", {("train", 64, 2): level})
    lines = verdicts.verdicts(report.load(run)[0])
    assert (
        lines[0] == "- **train, fp32**: 2 groups: winner in 1, equivalent in 1; 4 of 4 comparisons decided."
    )
    assert lines[2].startswith(
        "  - 64px b2: equivalent within 5%: torch-compile, torch-eager; pick by compile time, memory or "
        "deployment (torch-eager 0.99x [0.9"
    )
    assert "jax 0.50x [0.5" in lines[2] and "slower)" in lines[2]


def test_an_undecided_group_says_what_more_sampling_would_take(tmp_path: Path) -> None:
    """Three workers 4% apart cannot tell 1.07x from the margin: inconclusive, with the minutes more
    workers would take at the group's measured cost per worker."""
    run = fake_run(
        tmp_path / "run", {("train", 64, 2): {"torch-eager": 1.0, "torch-compile": 1.07}}, workers=3
    )
    records = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    for record in records:
        record["sampling"] = {
            "workers": 3,
            "seconds_per_worker": 30.0,
            "seconds": 90.0,
            "group_budget": 120.0,
        }
    (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = verdicts.verdicts(report.load(run)[0])
    line = next(line for line in lines if "64px b2" in line)
    assert line.startswith("  - 64px b2: inconclusive at 5%: torch-compile leads (torch-eager 0.9")
    assert re.search(
        r"; about \d+\.\d more minutes of sampling should decide it; 3 workers per path, 90 s of rounds "
        r"and fresh workers \(budget 120 s\)$",
        line,
    ), line


def test_skipped_cases_are_listed(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    skipped = {"case": {"path": "jax", "task": "tiled"}, "id": "x", "status": "skipped"}
    skipped["message"] = "--max-minutes 10 reached before this case started"
    with (run / "progress.jsonl").open("a") as progress:
        progress.write(json.dumps(skipped) + "\n")
    text = report.write_run(run)
    assert "1 without a number (skipped)" in text
    assert "| skipped  | --max-minutes 10 reached before this case started |" in text


def test_compare_two_runs(tmp_path: Path, capsys) -> None:
    first = fake_run(tmp_path / "first")
    # The same rounds, but in one group torch-compile is level with eager: that verdict differs, and
    # its speed-up leaves the first run's interval.
    level = {"torch-eager": 1.0, "torch-plain": 2.0, "torch-compile": 1.0, "jax": 0.5}
    second = fake_run(tmp_path / "second", {("infer", 64, 1): level})
    assert report.main(["--compare", str(first), str(second)]) == 0
    text = capsys.readouterr().out
    assert (second / "comparison-with-first.md").read_text().strip() == text.strip()
    assert "- first decided 8 of 8 comparisons (4 faster, 4 slower)" in text
    assert "- second decided 8 of 8 comparisons (4 faster, 3 slower, 1 equivalent)" in text
    # infer 64px b1: torch-eager slower than torch-compile in the first, equivalent in the second; the
    # pair torch-compile and jax is compared in the first only (in the second, eager is the fastest)
    assert "- 1 of 7 comparisons in both runs contradict" in text
    row = "| torch-eager   | torch-compile | 0.77x [0.77, 0.77] slower | 1.00x [1.00, 1.00] equivalent |"
    assert f"| infer  |     64 |       1 | fp32        {row}" in text
    assert "- 92% of second's speed-ups lie inside first's 95% intervals (11 of 12)" in text


@pytest.mark.parametrize("second", ["itself", "nothing measured"])
def test_compare_refuses_what_it_cannot_compare(tmp_path: Path, capsys, second: str) -> None:
    """A run against itself, or against one with no case: exit 2, one line, no file written."""
    first = fake_run(tmp_path / "first")
    other = first
    if second == "nothing measured":
        other = tmp_path / "interrupted"
        other.mkdir()
        (other / "progress.jsonl").write_text("")
    before = sorted(tmp_path.rglob("*"))
    assert report.main(["--compare", str(first), str(other)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert ("against itself" if second == "itself" else "interrupted: no measured case") in error
    assert sorted(tmp_path.rglob("*")) == before


def test_compare_with_an_older_run_counts_nothing_it_cannot_check(tmp_path: Path, run_dir: Path) -> None:
    text = report.compare(run_dir, run_dir)
    assert "- 0 of 0 comparisons in both runs contradict" in text
    assert "- no 95% intervals in run to check run's speed-ups against (0 of 0)" in text


# -- run folders that cannot be read -----------------------------------------------------------


def _broken_runs(results: Path) -> dict[str, str]:
    """Run folders in ``results``, each broken in a way seen, and a pattern of what names its problem
    (from the file's name on)."""
    (results / "truncated").mkdir(parents=True)
    (results / "truncated" / "benchmark.json").write_text('{"benchmarks": [{"name": "x", "st')
    (results / "not-an-object").mkdir()
    (results / "not-an-object" / "benchmark.json").write_text("[]")
    middle = fake_run(results / "bad-line")
    lines = (middle / "progress.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][:40] + "\n"  # cut short, but not the last line: a corrupt file, not a stop
    (middle / "progress.jsonl").write_text("".join(lines))
    keyless = fake_run(results / "missing-key")
    records = [json.loads(line) for line in (keyless / "progress.jsonl").read_text().splitlines()]
    del records[2]["tflops"]
    (keyless / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (results / "empty").mkdir()
    return {
        "truncated": (
            r"benchmark\.json is not valid JSON \(line 1 column 31\): Unterminated string starting at"
        ),
        "not-an-object": r"benchmark\.json is not a JSON object",
        "bad-line": r"progress\.jsonl is not valid JSON \(line 2 column \d+\): \w.*",
        "missing-key": r"progress\.jsonl has no 'tflops' in line 3 \(train-torch-compile-64px-b1-fp32\)",
        "empty": r"no benchmark\.json or progress\.jsonl \(no case ended\)",
    }


def test_the_index_names_the_run_folders_it_cannot_read(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    good = fake_run(results / "good")
    broken = _broken_runs(results)
    (results / "cells-run").mkdir()  # another command's output: no run, and not named
    (results / "cells-run" / "outcomes.json").write_text("{}")
    report.write_run(good)
    table, left_out = (results / "README.md").read_text().split("\nLeft out:\n")
    assert "[good](good/report.md)" in table and not any(f"[{name}]" in table for name in broken)
    for name, problem in broken.items():
        assert re.search(rf"^- skipped {re.escape(str(results / name))}: {problem}$", left_out, re.M), name
    assert "cells-run" not in left_out
    assert capsys.readouterr().err.count("results index: skipped") == len(broken)
    assert not list(results.rglob("*.partial"))  # every output renamed into place


def test_the_command_reports_a_healthy_run_beside_broken_ones(tmp_path: Path) -> None:
    results = tmp_path / "results"
    good = fake_run(results / "good")
    broken = _broken_runs(results)

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bench.report", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = command(str(good))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"skipped {results / 'truncated'}: benchmark.json is not valid JSON" in done.stderr
    assert "# unet-bench run: Fake CPU" in done.stdout
    done = command(str(results / "truncated"))
    expected = rf"error: {re.escape(str(results / 'truncated'))}/{broken['truncated']}\n"
    assert done.returncode == 2 and re.fullmatch(expected, done.stderr), done.stderr


@pytest.mark.parametrize("name", ["truncated", "not-an-object", "bad-line", "missing-key"])
def test_naming_a_run_that_cannot_be_read_is_a_one_line_error(tmp_path: Path, capsys, name: str) -> None:
    results = tmp_path / "results"
    good = fake_run(results / "good")
    problem = _broken_runs(results)[name]
    broken = results / name
    for argv in ([broken], ["--compare", good, broken], [good, broken]):
        assert report.main([str(arg) for arg in argv]) == 2
        error = capsys.readouterr().err
        assert re.fullmatch(rf"error: {re.escape(str(broken))}/{problem}\n", error), error


def test_a_last_line_cut_short_is_left_out_with_a_note(tmp_path: Path) -> None:
    """A sweep stopped while writing a record (or still running) leaves half a line: the rest is read."""
    run = fake_run(tmp_path / "results" / "run")
    whole = report.load(run)[0]
    with (run / "progress.jsonl").open("a") as progress:
        progress.write('{"id": "train-jax-128px-b1-fp32", "status": "o')
    measured, _, section = report.load(run)
    pd.testing.assert_frame_equal(measured, whole)
    cut = (
        r"skipped the last line of progress\.jsonl, cut short \(the sweep stopped while writing it, or is "
        r"still running\): it is not valid JSON \(line 17 column \d+\): Unterminated string starting at"
    )
    assert len(section["notes"]) == 1 and re.fullmatch(cut, section["notes"][0])
    assert re.search(rf"^Note: {cut}\.$", report.write_run(run), re.M)
    assert re.search(rf"^- {re.escape(str(run))}: {cut}$", (run.parent / "README.md").read_text(), re.M)
    (run / "environment.json").write_text('{"device": ')  # the tables do without it
    measured, _, section = report.load(run)
    pd.testing.assert_frame_equal(measured, whole)
    assert section["notes"][1].startswith("environment.json is not valid JSON (line 1 column 12): ")
    assert section["notes"][1].endswith(": the device and versions are unknown")


# -- the README's generated results ------------------------------------------------------------


def test_readme_sections_are_written_between_the_markers(tmp_path: Path) -> None:
    fake_run(tmp_path / "results" / "one")
    readme = tmp_path / "README.md"
    marker = "<!-- begin generated: python -m bench.report --readme results/one -->"
    readme.write_text(f"# Title\n\nBefore.\n\n{marker}\nstale tables\n<!-- end generated -->\n\nAfter.\n")
    assert not report.readme_matches(readme)
    report.write_readme(readme=readme)
    text = readme.read_text()
    assert text.startswith("# Title\n\nBefore.\n\n" + marker) and text.endswith(
        "<!-- end generated -->\n\nAfter.\n"
    )
    assert "stale" not in text and "[one](results/one/report.md)" in text
    page = (tmp_path / "docs" / "results.md").read_text()  # the results in full, made beside it
    assert "2 groups: winner in 2" in text and "1.3" in page
    assert page.startswith(f"# Results in full\n\n{marker}\n") and "[one](../results/one/report.md)" in page
    assert report.readme_matches(readme)
    fake_run(tmp_path / "results" / "two")
    report.write_readme([tmp_path / "results" / "two", tmp_path / "results" / "one"], readme)
    assert report.readme_runs(readme) == ["results/two", "results/one"]
    with pytest.raises(ValueError, match="no '<!-- begin generated"):
        report.write_readme(readme=tmp_path / "results" / "one" / "environment.json")


@pytest.mark.parametrize("where", ["outside results/", "nothing measured"])
def test_the_readme_names_only_measured_runs_under_results(tmp_path: Path, capsys, where: str) -> None:
    """--readme and --check refuse, naming the run and the fix, and leave the README as it was."""
    fake_run(tmp_path / "results" / "one")
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- begin generated: python -m bench.report --readme results/one -->\n<!-- end generated -->\n"
    )
    report.write_readme(readme=readme)
    before = readme.read_text()
    if where == "outside results/":
        bad = fake_run(tmp_path / "elsewhere" / "run")
        message = "elsewhere/run: not under"
    else:
        bad = tmp_path / "results" / "interrupted"
        bad.mkdir()
        (bad / "progress.jsonl").write_text("")
        (bad / "environment.json").write_text(json.dumps({"device": "cpu", "device_name": "Fake CPU"}))
        message = "results/interrupted: no measured case"
    with pytest.raises(ValueError, match=message):
        report.write_readme([bad], readme)
    assert readme.read_text() == before
    readme.write_text(before.replace("--readme results/one", f"--readme {bad.relative_to(tmp_path)}"))
    with pytest.raises(ValueError, match=message):
        report.readme_matches(readme)
    # the command, on the repository's README: exit 2, one line, the README as it was
    repository_readme = report.README.read_bytes()
    assert report.main(["--readme", str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "not under" in error
    assert report.README.read_bytes() == repository_readme


@pytest.mark.parametrize("stale_file", ["docs/results.md", "README.md"])
def test_check_names_the_file_that_is_stale(tmp_path: Path, capsys, monkeypatch, stale_file: str) -> None:
    """--check fails when one file alone (either) no longer holds what --readme writes, naming it."""
    fake_run(tmp_path / "results" / "one")
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- begin generated: python -m bench.report --readme results/one -->\n<!-- end generated -->\n"
    )
    report.write_run(tmp_path / "results" / "one")  # its report, index: --check verifies them too
    report.write_readme(readme=readme)
    monkeypatch.setattr("bench.report.cli.README", readme)
    assert report.main(["--check"]) == 0
    edited = tmp_path / stale_file
    edited.write_text(edited.read_text().replace("2 groups: winner in 2", "2 groups: winner in 1"))
    assert not report.readme_matches(readme)
    assert report.main(["--check"]) == 1
    assert capsys.readouterr().err == (
        f"{stale_file}'s results are not what `python -m bench.report --readme` writes: run it\n"
    )


def test_check_names_each_report_index_and_comparison_that_is_stale(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """--check holds every committed report to what its records give: a run's report.md and CSVs, the
    results index and a comparison, each named when it is not (or is missing)."""
    results = tmp_path / "results"
    first, second = (
        fake_run(results / "first"),
        fake_run(results / "second", {("train", 64, 2): {"jax": 1.1}}),
    )
    report.write_run(first)
    report.write_run(second)
    report.write_comparison(first, second)
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- begin generated: python -m bench.report --readme results/first -->\n<!-- end generated -->\n"
    )
    report.write_readme(readme=readme)
    monkeypatch.setattr("bench.report.cli.README", readme)
    assert report.main(["--check"]) == 0
    edited = [
        first / "report.md",
        second / "cases.csv",
        results / "README.md",
        second / "comparison-with-first.md",
    ]
    for file in edited:
        file.write_text(file.read_text() + "edited by hand\n")
    (first / "cases.csv").unlink()
    assert report.main(["--check"]) == 1
    named = sorted(line.split(" is not what")[0] for line in capsys.readouterr().err.splitlines())
    assert named == sorted(str(f.relative_to(tmp_path)) for f in [*edited, first / "cases.csv"])


def test_the_committed_reports_are_what_their_records_give() -> None:
    """Every report, CSV, index and comparison under results/ is what the report writes from its
    records now (`python -m bench.report --check`)."""
    assert stale_reports(report.README.parent / "results") == []


def test_records_of_every_schema_read_alike(tmp_path: Path) -> None:
    """A record stamped with today's schema reads as the same record without it (version 1); a newer
    schema than the reader's is refused, naming the line."""
    run = fake_run(tmp_path / "results" / "run")
    unstamped = report.load(run)[0]
    lines = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    for schema, expected in ((records.SCHEMA, None), (records.SCHEMA + 1, "newer than this reader's")):
        # today's engine names each round's worker: fake_run's one worker, named
        named = [{"round_workers": [0] * len(record["rounds_seconds"]), **record} for record in lines]
        stamped = [{**record, records.SCHEMA_KEY: schema} for record in named]
        (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stamped))
        if expected is None:
            pd.testing.assert_frame_equal(report.load(run)[0], unstamped)
        else:
            with pytest.raises(report.UnreadableRun, match=f"line 1 .*{expected}"):
                report.load(run)


def test_upgrade_reads_older_engines_in_todays_shape() -> None:
    """Version 1's engines, told apart by what they wrote, in today's shape: no rounds, one worker, a
    shared compile cache, TF32 in the backward, an unnamed failure."""
    first = {"path": "torch-eager", "task": "train", "precision": "fp32", "images_per_second": 1.0}
    first["settings"] = {"framework": "torch"}
    upgraded = records.upgrade(first)
    assert upgraded["schema"] == records.SCHEMA and upgraded["status"] == records.OK
    assert upgraded["rounds_seconds"] == upgraded["round_workers"] == [] and upgraded["schedule"] == ""
    assert upgraded["devices"] is None
    assert set(upgraded["quirks"]) == {records.SHARED_COMPILE_CACHE, records.TF32_BACKWARD}
    rounds = {"rounds_seconds": [0.1, 0.2], "round_blocks": [0, 1], "compile_cold_reused": False}
    later = records.upgrade({**first, **rounds, "device": "cpu"})
    assert later["round_blocks"] == [0, 1] and later["round_workers"] == [0, 0] and later["quirks"] == []
    assert records.upgrade({"id": "x", "case": {}})["status"] == "interrupted"
    today = {**first, records.SCHEMA_KEY: records.SCHEMA, **rounds, "round_workers": [0, 1]}
    assert records.upgrade(today) == {**today, "quirks": []}
    assert set(records.STATUSES) >= {*records.BY_DESIGN, *records.NOT_MEASURED, *records.FAILED}


def test_the_repository_readme_matches_its_runs() -> None:
    """The README's results are what `python -m bench.report --readme` writes from the runs its marker
    names; after new runs: run that command (`--check` says whether it is needed)."""
    assert report.readme_runs(), "README.md has no generated results"
    assert report.readme_matches(), "README.md's results are stale: python -m bench.report --readme"


def test_deployment_ranks_runtimes_with_frameworks_their_cost_and_outcome(tmp_path: Path) -> None:
    """Each inference group with a runtime: every path against the fastest framework path, its
    speed-up's interval and outcome at the margin, its export or compile and its packages."""
    infer = {"torch-eager": 1.0, "torch-compile": 1.3, "jax": 0.5, "onnxruntime": 1.9, "openvino": 1.32}
    run = fake_run(tmp_path / "run", {("infer", 64, 1): infer, ("infer", 64, 2): infer})
    measured = report.load(run)[0]
    versions = {"onnxruntime": "1.32.0", "onnx": "1.23.2", "torch": "2.13.0"}
    lines = verdicts.deployment(measured, versions)
    assert lines[0] == "- **infer 64px b1 fp32**, against torch-compile, its fastest framework path:"
    assert re.match(
        r"  - onnxruntime: 1\.4\dx \[1\.\d\d, 1\.\d\d\] faster \(export and build ",
        lines[1],
    )
    assert lines[1].endswith("needs onnxruntime 1.32.0, onnx 1.23.2, onnxscript)")
    assert re.match(r"  - openvino: 1\.0\dx \[.*\] equivalent \(", lines[2])
    assert lines[3].startswith("  - torch-compile: 1x (compile 30 s cold, 1 s cached; needs torch 2.13.0)")
    assert re.match(r"  - jax: 0\.3\dx \[.*\] slower \(.*needs jax, flax\)", lines[5])
    assert len(lines) == 12  # both groups; the train groups have no runtime
    assert "### Deploying for inference" in report.write_run(run)
    assert verdicts.deployment(measured[~measured.path.isin(["onnxruntime", "openvino"])], versions) == []


def test_what_a_path_cannot_run_is_listed_apart_from_failures(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    with (run / "progress.jsonl").open("a") as progress:
        for size in (64, 128):
            case = {"path": "onnxruntime", "task": "train", "size": size, "batch": 1, "precision": "fp32"}
            why = "onnxruntime is an inference runtime: it runs an exported forward, no training"
            progress.write(
                json.dumps({"case": case, "id": f"x{size}", "status": "not-applicable", "message": why})
                + "\n"
            )
    text = report.write_run(run)
    assert "## Cases without a number" not in text
    assert "## Not applicable or not installed" in text
    assert text.count("| onnxruntime | train  | fp32        |") == 1  # one row for every size
    assert "none without a number, 2 not applicable or not installed" in markdown.results_run(run, "run")


def test_rates_order_speedups_and_verdicts_come_from_one_estimate(tmp_path: Path) -> None:
    """Workers with luck of their own, paths close together: the pooled median of the rounds and the
    paired speed-ups could point opposite ways; the report's images per second, the speed-ups, the
    order and the verdict's fastest path must not."""
    close = {"torch-eager": 1.0, "torch-compile": 1.01, "jax": 0.99}
    run = fake_run(tmp_path / "run", dict.fromkeys(GROUPS, close), blocks=15, workers=5, luck=0.05)
    measured = report.load(run)[0]
    for _, group in measured.groupby(["task", "size", "batch"]):
        judgement = group.judgement.iloc[0]
        rates = group.set_index("path").img_per_s
        assert rates.idxmax() == judgement.best  # the path named first has the highest rate
        for c in judgement.comparisons:  # each speed-up is the ratio of the two rates
            assert c.speedup.value == pytest.approx(rates[c.path] / rates[judgement.best], rel=1e-9)
            assert c.speedup.value <= 1.0
        eager = group[group.path == "torch-eager"].iloc[0]
        for case in group.itertuples():
            assert case.speedup == pytest.approx(case.img_per_s / eager.img_per_s, rel=1e-9)
    table = tables.throughput_table(measured, "train")
    assert table.map(lambda cell: cell.endswith("fastest")).to_numpy().sum() == 2  # one per group
