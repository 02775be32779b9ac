"""The report, built from a stored run (tests/data/tiny-cpu-run, made by `pytest --benchmark-only`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import report

STORED = Path(__file__).parent / "data" / "tiny-cpu-run"


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
    assert "## Which to pick" in text
    assert text.count(" of them.") == 4  # a verdict per task and precision
    assert "## train: images per second (speed-up against torch-eager)" in text
    assert "| size |" in text.replace("   ", " ").replace("  ", " ")


def test_speedups_are_against_torch_eager(run_dir: Path) -> None:
    measured = report.load(run_dir)[0]
    ratio = report.speedups(measured, "train")
    np.testing.assert_allclose(ratio["torch-eager"], 1.0)
    train = measured[measured.task == "train"].set_index(["size", "batch", "precision", "path"])["img_per_s"]
    case = (32, 2, "fp32")
    assert ratio.loc[case, "jax"] == pytest.approx(train[(*case, "jax")] / train[(*case, "torch-eager")])


def test_break_even_steps() -> None:
    measured = pd.DataFrame(
        {
            "path": ["torch-eager", "fast", "slow"],
            "task": "train",
            "size": 64,
            "batch": 2,
            "precision": "fp32",
            "median_ms": [200.0, 100.0, 400.0],
            "compile_cold_s": [0.0, 30.0, 1.0],
        }
    )
    steps = report.break_even_steps(measured, "train")
    assert steps.loc[(64, 2, "fp32"), "fast"] == 300  # 30 s / 0.1 s a step
    assert steps.loc[(64, 2, "fp32"), "slow"] == np.inf


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


def test_cli_refuses_a_folder_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])


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
    table = report.scaling_table(measured).set_index(["scaling", "devices"])
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
