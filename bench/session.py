"""One pytest session's run: its folder (new, or resumed), SIGTERM, environment.json, the run's
section of benchmark.json and the end of the run (leftover workers, the report).

bench/plugin.py calls these from pytest's hooks; refusals are matrix.OptionError, as the options'.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import shutil
import signal
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest import ExitCode

from bench import environment, report, resume
from bench.device_names import simulated_devices
from bench.matrix import Matrix, OptionError
from bench.sweep import Sweep, leftover_processes
from impls.files import new_folder, write_text


@dataclass
class Run:
    """What this session measures, and where: the matrix (less the cases a resumed run holds), the
    folder of a measured run, the environment it records, the earlier sessions' (benchmarks,
    failures) of a resumed run, the sweep, and the text of the terminal's summary."""

    matrix: Matrix
    run_dir: Path | None = None
    environment: dict[str, Any] | None = None
    resumed: tuple[list, list] | None = None
    sweep: Sweep | None = None
    summary: str | None = None

    @property
    def cases(self) -> list:
        """Every case of the session, the data-parallel ones last."""
        return self.matrix.cases + self.matrix.scaling


def _stop_on_sigterm(signum, frame) -> None:
    # As Ctrl-C: the case in progress is recorded as interrupted, its workers ended,
    # and pytest still writes benchmark.json and the report for what was measured.
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def start(run: Run, resume_dir: str | None) -> None:
    """A measured run begins: SIGTERM stops it as Ctrl-C does, the environment is read now (so that
    the run records the code it started with), and its folder is made, or ``resume_dir`` checked."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    device = run.matrix.cases[0].device
    run.environment = environment.describe(device)
    if resume_dir is not None:
        _resume(run, Path(resume_dir))
        return
    simulated = simulated_devices(device) and any((c.devices or 1) > 1 for c in run.matrix.scaling)
    slug = environment.device_slug(device) + ("-simulated-devices" if simulated else "")
    run.run_dir = new_folder(run.matrix.results_dir, f"{datetime.date.today().isoformat()}-{slug}")
    run.run_dir.mkdir(parents=True)
    # Kept beside progress.jsonl for a report rebuilt after a sweep that was killed outright
    write_text(run.run_dir / "environment.json", json.dumps(run.environment, indent=1))


def _resume(run: Run, run_dir: Path) -> None:
    """The run folder --resume names, checked; the matrix (and the scaling one) left with the cases
    it holds no record of, and the earlier sessions' records kept for the run's benchmark.json."""
    try:
        resume.check(run_dir, run.environment)
        benchmarks, failures = resume.recorded(run_dir)
    except (ValueError, report.UnreadableRun) as error:
        raise OptionError(str(error)) from None
    done = {resume.case_id(record) for record in benchmarks + failures}
    run.matrix = dataclasses.replace(
        run.matrix,
        cases=[case for case in run.matrix.cases if case.id not in done],
        scaling=[case for case in run.matrix.scaling if case.id not in done],
    )
    run.resumed = (benchmarks, failures)
    # Superseded by the one this session writes (the earlier cases in it); until then the report
    # reads progress.jsonl, which holds every session's records.
    earlier = run_dir / "benchmark.json"
    if earlier.exists():
        kept = (run_dir / f"benchmark-session-{n}.json" for n in itertools.count(1))
        earlier.rename(next(file for file in kept if not file.exists()))
    run.run_dir = run_dir


def json_target(file: Path):
    """What pytest-benchmark's --benchmark-json holds: a path from 5.3, an open file before."""
    version = tuple(int(part) for part in metadata.version("pytest-benchmark").split(".")[:2])
    return file if version >= (5, 3) else file.open("wb")


def update_json(run: Run, output_json: dict) -> None:
    """The run's own section of benchmark.json (spec, environment, options, failures); a resumed
    run's earlier sessions' cases too, as one run."""
    options = run.matrix.options
    output_json["unet_bench"] = {
        "spec": options["spec"].__dict__,
        "environment": run.environment or environment.describe(run.matrix.cases[0].device),
        "options": {
            **{k: v for k, v in options.items() if k != "spec"},
            "compile_cache": str(run.sweep.compile_cache),
        },
        "failures": [r for r in run.sweep.records if r.get("status") != "ok"],
    }
    if run.resumed is not None:
        benchmarks, failures = run.resumed
        output_json["benchmarks"] = benchmarks + output_json["benchmarks"]
        output_json["unet_bench"]["failures"] = failures + output_json["unet_bench"]["failures"]


def finish(run: Run) -> ExitCode | None:
    """The end of the session: workers that outlived their cases killed, the run's report written
    (or its empty folder removed). The session's exit status where these decide it, else None."""
    status = None
    leftovers = leftover_processes()
    if leftovers:  # a bug: every worker is ended with its case
        for process in leftovers:
            process.kill()
        status = ExitCode.TESTS_FAILED
        run.summary = (
            f"ERROR: {len(leftovers)} worker processes outlived their cases and were killed: "
            + ", ".join(str(p.pid) for p in leftovers)
        )
    if run.run_dir is None:
        return status
    if run.resumed is not None and not run.cases:
        status = ExitCode.OK  # not "no tests collected": the run is complete
        run.summary = f"nothing left to measure in {run.run_dir}: its report is rebuilt"
    if not report.is_run(run.run_dir):
        shutil.rmtree(run.run_dir)  # nothing was measured
        return status
    try:
        text = report.write_run(run.run_dir)
    except report.UnreadableRun as error:  # its own record (a broken sibling is only named in the index)
        status = ExitCode.TESTS_FAILED
        text = f"ERROR: no report: {error}"
    run.summary = text + "\n" + (run.summary or "")
    return status
