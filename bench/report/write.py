"""A run's report files beside its JSON: report.md, the CSVs and the plots; then the index of the
results folder it is in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.device_names import simulated_devices
from bench.report.cases import INTERNAL, single_device
from bench.report.index import write_index
from bench.report.markdown import report_markdown
from bench.report.plots import plot, plot_scaling
from bench.report.runs import others, read, tables
from bench.report.tables import scaling_table, tasks
from impls.files import atomic_output, write_text


def write_csv(table: pd.DataFrame, file: Path, index: bool = False) -> None:
    with atomic_output(file) as temporary:
        table.to_csv(temporary, index=index)


def write_run(run_dir: Path) -> str:
    """Write a run's tables (Markdown, CSV) and plots next to its benchmark.json; return the Markdown.
    An UnreadableRun where the run's own files cannot be read; siblings that cannot be are left out
    of the index (write_index) and named there."""
    run_dir = Path(run_dir)
    run = read(run_dir)
    measured, failures, section = tables(run)
    text = report_markdown(measured, failures, section, others(run))
    write_text(run_dir / "report.md", text)
    # The rounds themselves stay in benchmark.json and progress.jsonl.
    write_csv(measured.drop(columns=INTERNAL, errors="ignore"), run_dir / "cases.csv")
    scaling = scaling_table(measured) if not measured.empty else measured
    if not scaling.empty:
        write_csv(scaling, run_dir / "scaling.csv")
        simulated = simulated_devices(section.get("environment", {}).get("device", ""))
        plot_scaling(scaling, run_dir / "scaling.png", "SIMULATED devices on one CPU" if simulated else "")
    if not failures.empty:
        write_csv(failures, run_dir / "failures.csv")
    for task in sorted(set(tasks(single_device(measured))) - {"tiled"}):
        plot(single_device(measured), run_dir / f"throughput-{task}.png", task)
    write_index(run_dir.parent)
    return text
