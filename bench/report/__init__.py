"""Comparison tables with 95% intervals, verdicts and plots, built with pandas from pytest-benchmark's JSON.

``python -m bench.report RUN_DIR`` rebuilds one run's report; with several run
directories (other machines, other GPUs) it merges them into one cross-device
table. ``--compare RUN_A RUN_B`` says whether a second run reproduces a first;
``--readme RUN_DIR...`` writes the results of runs into README.md (at a glance)
and docs/results.md (in full), and ``--check`` says whether both still match them, and whether
every report, CSV, index and comparison under results/ is what its records give.

A run directory holds ``benchmark.json``: pytest-benchmark's own data, with
this suite's ``extra_info`` per benchmark and a ``unet_bench`` section (spec,
environment, options, failed cases). A sweep that was killed outright
(SIGKILL, a lost machine) wrote no ``benchmark.json``; its ``progress.jsonl``,
one record per case written as each case ended, rebuilds the same tables; a
last line cut short (a sweep stopped while writing it) is left out, with a note.
A run folder that cannot be read (a corrupt or half-written file, a missing
field) is left out of results/README.md and named there; named on the command
line, it is a one-line error that says which file and what is wrong with it.
Every record is read through bench/records.py's ``upgrade``, whichever engine wrote it.

Intervals and verdicts come from bench/stats.py: a case's median time with a
95% interval over its worker processes (or, with one, a bootstrap over its
rounds), speed-ups from the blocks of rounds that the engine measured side by
side, every interval over workers no narrower than the group's pooled
worker-to-worker spread allows and widened by the run-to-run spread, and the
four outcomes at the run's margin (faster, slower, equivalent, inconclusive).
Times, rates, the order of paths and speed-ups all come from one estimate
(stats.estimate). Runs of the older engines kept no rounds: their tables have
values without intervals, and no verdicts.

The modules, in the order they build on each other: ``cases`` (a record as a table row, the order of
paths), ``intervals``, ``runs`` (reading a run folder), ``tables``, ``verdicts``, ``markdown`` (each
section built once, laid out for report.md and for the results pages), ``plots``, ``index``,
``compare``, ``write`` (a run's files, and which committed ones are stale), ``readme``, and ``cli``
(run by ``__main__``).
"""

from bench.report.cli import main
from bench.report.compare import compare, write_comparison
from bench.report.readme import README, readme_matches, readme_runs, write_readme
from bench.report.runs import UnreadableRun, is_run, load, read_environment, read_records
from bench.report.write import write_run

__all__ = [
    "README",
    "UnreadableRun",
    "compare",
    "is_run",
    "load",
    "main",
    "read_environment",
    "read_records",
    "readme_matches",
    "readme_runs",
    "write_comparison",
    "write_readme",
    "write_run",
]
