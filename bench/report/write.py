"""A run's report files beside its JSON: report.md, the CSVs and the plots; then the index of the
results folder it is in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.device_names import simulated_devices
from bench.report.cases import INTERNAL, single_device
from bench.report.compare import COMPARISON_PREFIX, compare
from bench.report.index import index_text, write_index
from bench.report.markdown import report_markdown
from bench.report.plots import plot, plot_scaling
from bench.report.runs import is_run, others, read, tables
from bench.report.tables import scaling_table, tasks
from bench.run_config import WHOLE_INPUT_TASKS
from impls.files import atomic_output, write_text


def write_csv(table: pd.DataFrame, file: Path, index: bool = False) -> None:
    with atomic_output(file) as temporary:
        table.to_csv(temporary, index=index)


def _built(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict[str, str]]:
    """The run's measured cases, its scaling table, its JSON section and its report files by name
    (report.md, the CSVs)."""
    run = read(Path(run_dir))
    measured, failures, section = tables(run)
    files = {"report.md": report_markdown(measured, failures, section, others(run))}
    # The rounds themselves stay in benchmark.json and progress.jsonl.
    files["cases.csv"] = measured.drop(columns=INTERNAL, errors="ignore").to_csv(index=False)
    scaling = scaling_table(measured) if not measured.empty else measured
    if not scaling.empty:
        files["scaling.csv"] = scaling.to_csv(index=False)
    if not failures.empty:
        files["failures.csv"] = failures.to_csv(index=False)
    return measured, scaling, section, files


def run_files(run_dir: Path) -> dict[str, str]:
    """A run's report files by name, as ``write_run`` writes them. An UnreadableRun where the run's own
    files cannot be read."""
    return _built(run_dir)[3]


def write_run(run_dir: Path) -> str:
    """Write a run's tables (Markdown, CSV) and plots next to its benchmark.json; return the Markdown.
    An UnreadableRun where the run's own files cannot be read; siblings that cannot be are left out
    of the index (write_index) and named there."""
    run_dir = Path(run_dir)
    measured, scaling, section, files = _built(run_dir)
    for name, text in files.items():
        write_text(run_dir / name, text)
    if not scaling.empty:
        simulated = simulated_devices(section.get("environment", {}).get("device", ""))
        title = "SIMULATED devices on one CPU" if simulated else ""
        plot_scaling(scaling, run_dir / "scaling.png", title)
    for task in sorted(set(tasks(single_device(measured))) - set(WHOLE_INPUT_TASKS)):
        plot(single_device(measured), run_dir / f"throughput-{task}.png", task)
    write_index(run_dir.parent)
    return files["report.md"]


def stale_reports(results: Path) -> list[Path]:
    """The committed report files under ``results`` that are not what the report would write from the
    records beside them now: each run's report.md and CSVs, the index, each comparison (plots apart)."""
    expected: dict[Path, str] = {results / "README.md": index_text(results)[0]}
    for run_dir in sorted(d for d in results.iterdir() if d.is_dir() and is_run(d)):
        expected |= {run_dir / name: text for name, text in run_files(run_dir).items()}
        for file in run_dir.glob(f"{COMPARISON_PREFIX}*.md"):
            expected[file] = compare(results / file.stem.removeprefix(COMPARISON_PREFIX), run_dir)
    return [file for file, text in expected.items() if not file.exists() or file.read_text() != text]
