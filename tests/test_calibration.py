"""bench/calibration.py and the report's calibration section, on synthetic calibration runs whose
effects and run-to-run spread are known."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bench import calibration, report
from bench.report import verdicts
from bench.run_config import calibration_effect
from tests.test_report import GROUPS, fake_run

EFFECTS = {"torch-eager": 1.0, "torch-eager+0%": 1.0, "torch-eager+10%": 1 / 1.1, "torch-eager+20%": 1 / 1.2}


def calibration_run(folder: Path, seed: int, run_shift: float = 0.0, blocks: int = 15) -> Path:
    """A run of GROUPS, each with torch-eager and three calibration paths over five workers 1% apart; each
    calibration path's extra seconds per call as nominal, and its speed-ups moved by a lognormal
    ``run_shift`` drawn per group (the run-to-run spread it should find)."""
    rng = np.random.default_rng(seed)
    speedups = {}
    for group in GROUPS:
        shift = float(np.exp(run_shift * rng.standard_normal()))
        speedups[group] = {p: s * (shift if p != "torch-eager" else 1.0) for p, s in EFFECTS.items()}
    run = fake_run(folder, speedups, blocks=blocks, workers=5, luck=0.01)
    records = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    eager = {r["group"]: r["stats"]["median"] for r in records if r["case"]["path"] == "torch-eager"}
    for record in records:
        effect = calibration_effect(record["case"]["path"])
        if effect is not None:  # the extra work: as nominal, of torch eager's median round
            extra = [effect * eager[record["group"]]] * 3
            record["settings"]["calibration"] = {"effect": effect, "extra_seconds": extra}
    (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_the_report_shows_each_calibration_comparison_with_its_measured_effect(tmp_path: Path) -> None:
    text = report.write_run(calibration_run(tmp_path / "run", seed=0))
    section = text.split("## Calibration: known effects against torch-eager")[1].split("## train")[0]
    row = r"\| train  \|     64 \|       1 \| fp32        \| torch-eager\+10% \| 10%       \| 1?\d\.\d%"
    assert re.search(row, section)
    assert "slower" in section and "equivalent" in section
    rows = verdicts.calibration_rows(report.load(tmp_path / "run")[0])
    assert len(rows) == 3 * len(GROUPS)
    assert set(rows[rows.nominal == 0].outcome) == {"equivalent"}
    assert set(rows[rows.nominal == 0.2].outcome) == {"slower"}
    assert (rows.measured - rows.nominal).abs().max() < 0.03  # the extra work over torch eager's time
    # no verdict names a calibration path: torch-eager is the one competing path
    assert "calibration paths are in the tables but in no verdict" in text
    assert "torch-eager alone" in text


def test_the_table_pools_groups_and_checks_the_bars(tmp_path: Path, capsys) -> None:
    runs = [calibration_run(tmp_path / f"run{i}", seed=i) for i in range(2)]
    out = tmp_path / "calibration.md"
    assert calibration.main([*map(str, runs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text  # printed with its newline, written with one
    assert "| 0%       |        8 |      2 |" in text  # eight groups from two runs
    assert "- 0% (called faster or slower in at most 1 group of 30" in text
    assert (
        "met so far, 8 of 30 groups: 0 faster or slower, 100% equivalent, 1.00 inside 100% in 8 groups"
        in text
    )
    assert (
        "- 20% (called slower in at least 95%): met so far, 8 of 30 groups: 100% slower in 8 groups" in text
    )


@pytest.mark.parametrize(("shift", "low", "high"), [(0.0, 0.0, 0.012), (0.05, 0.025, 0.09)])
def test_the_run_spread_is_recovered_from_groups_of_several_runs(
    tmp_path: Path, shift: float, low: float, high: float
) -> None:
    runs = [calibration_run(tmp_path / f"run{i}", seed=i, run_shift=shift) for i in range(4)]
    found = calibration.trials(runs)
    value, how = calibration.run_spread(found)
    assert low <= value <= high, how


def test_the_command_refuses_what_it_cannot_use(tmp_path: Path, capsys) -> None:
    plain = fake_run(tmp_path / "plain")
    assert calibration.main([str(plain)]) == 2
    assert "have no calibration paths: make them with --calibration 0,5,10,20" in capsys.readouterr().err
    one = calibration_run(tmp_path / "one", seed=0)
    assert calibration.main(["--run-spread", str(one)]) == 2
    assert "needs groups from at least two runs" in capsys.readouterr().err
    assert calibration.main([str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_an_existing_table_is_replaced_only_with_force(tmp_path: Path, capsys) -> None:
    run = calibration_run(tmp_path / "run", seed=0)
    table = tmp_path / "calibration.md"
    table.write_text("the user's notes")
    assert calibration.main([str(run), "--out", str(table)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "calibration.md already exists" in error and "--force" in error
    assert table.read_text() == "the user's notes"
    assert calibration.main([str(run), "--out", str(table), "--force"]) == 0
    assert table.read_text().startswith("# Calibration: the rule on known effects")


def test_the_committed_calibration_table_is_what_its_command_makes() -> None:
    """results/calibration/calibration.md, regenerated from the committed raw rounds of the runs its
    first line names: `python -m bench.calibration --out results/calibration/calibration.md RUN...`."""
    root = Path(__file__).resolve().parent.parent
    table = root / "results" / "calibration" / "calibration.md"
    text = table.read_text()
    named = re.search(r"`python -m bench.calibration (.*?)`", text).group(1).split()
    runs = [Path(name) for name in named]
    assert runs and all(report.is_run(root / run) for run in runs)
    found = calibration.trials([root / run for run in runs])
    assert text == calibration.markdown(found, runs) + "\n"


def test_worker_figures_compare_medians_and_fastest_rounds(tmp_path: Path, capsys) -> None:
    """Stray slow rounds (a third of them, on one path) move a worker's median but
    not its fastest round: the spread by fastest rounds stays small."""
    run = calibration_run(tmp_path / "run", seed=0, blocks=25)  # five rounds per worker
    records = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(5)
    for record in records:
        if record["case"]["path"] == "torch-eager+0%":
            seconds = np.asarray(record["rounds_seconds"])
            slow = rng.random(seconds.size) < 0.3
            record["rounds_seconds"] = list(
                seconds * np.where(slow, rng.uniform(1.2, 1.5, seconds.size), 1.0)
            )
    (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = calibration.worker_figure_spreads([run])
    assert len(table) == 3 * len(GROUPS)
    aa = table[table.path == "torch-eager+0%"]
    assert aa["fastest: sd"].mean() < aa["median: sd"].mean() / 2
    assert ((aa["fastest: speed-up"] - 1).abs() < 0.03).all()
    assert calibration.main(["--worker-figures", str(run)]) == 0
    assert "fastest: sd |" in capsys.readouterr().out.splitlines()[0]
