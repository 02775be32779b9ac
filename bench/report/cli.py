"""Comparison tables with 95% intervals, verdicts and plots, built with pandas from pytest-benchmark's JSON.

The command line of ``python -m bench.report`` (the package's docstring says what it does), run by
bench/report/__main__.py; apart from it so that ``bench.report.main`` imports without runpy
importing the entry module twice."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.compare import write_comparison
from bench.report.index import merge
from bench.report.readme import COMMAND, README, stale, write_readme
from bench.report.runs import is_run
from bench.report.write import stale_reports, write_csv, write_run
from impls.files import write_text


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _command(args: argparse.Namespace) -> int:
    if args.check:
        pages = stale(README)
        for file in pages:
            shown = file.relative_to(README.parent)
            print(f"{shown}'s results are not what `{COMMAND}` writes: run it", file=sys.stderr)
        reports = stale_reports(README.parent / "results")
        for file in reports:
            shown = file.relative_to(README.parent)
            print(
                f"{shown} is not what the report makes of the records beside it now: "
                f"`python -m bench.report {shown.parent}` (or --compare) writes it",
                file=sys.stderr,
            )
        return 1 if pages or reports else 0
    if args.readme:
        write_readme(args.run_dirs)
        return 0
    if args.compare:
        if len(args.run_dirs) != 2:
            return _fail("--compare takes two run folders: RUN_A RUN_B")
        print(write_comparison(*args.run_dirs))
        return 0
    if not args.run_dirs:
        return _fail("no run folder given")
    if len(args.run_dirs) == 1:
        print(write_run(args.run_dirs[0]))
        return 0
    table = merge(args.run_dirs)
    text = "# Images per second across devices\n\n" + table.round(3).to_markdown() + "\n"
    print(text)
    if args.out:
        write_text(args.out / "cross-device.md", text)
        write_csv(table, args.out / "cross-device.csv", index=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="results/<date>-<device>/ folders")
    parser.add_argument("--out", type=Path, help="with several runs: write cross-device.md and .csv here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true", help="RUN_A RUN_B: does RUN_B reproduce RUN_A?")
    mode.add_argument("--readme", action="store_true", help="write README.md's and docs/results.md's results")
    mode.add_argument(
        "--check",
        action="store_true",
        help="exit 1, naming the file, if README.md's or docs/results.md's results, or a report, index or "
        "comparison under results/, are not what their runs give",
    )
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not is_run(d)]
    if missing:
        return _fail(f"not a run folder (no benchmark.json or progress.jsonl): {', '.join(missing)}")
    try:
        return _command(args)
    except ValueError as error:  # a run named that cannot be read, no README markers, an unwritable output
        return _fail(str(error))
