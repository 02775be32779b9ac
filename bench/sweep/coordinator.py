"""The sweep: the cases of a run, measured group by group, each case recorded whatever happens.

``Sweep`` coordinates the parts (bench/sweep/__init__.py tells the method): it sets up each case
of a group (case_setup.py), times their rounds together (rounds.py), records each case with its
metrics (metrics.py) in ``progress.jsonl``, and says how far the run is (estimates.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench import keys, records, stats
from bench.pytest_benchmark_glue import to_benchmark
from bench.run_config import RunConfig, unavailable
from bench.sweep import capacity
from bench.sweep.case import NOT_RUN, CaseFailure, CaseSkipped, Prepared, failure
from bench.sweep.case_setup import CaseSetup
from bench.sweep.cold import ColdCompiles
from bench.sweep.estimates import Estimates, progress_line
from bench.sweep.form_choices import FormChoices
from bench.sweep.kept_files import KeptFiles, default_compile_cache
from bench.sweep.metrics import DevicePeaks, extra_info
from bench.sweep.process_worker import ProcessWorker
from bench.sweep.references import References
from bench.sweep.rounds import WARM_UP_SECONDS, RoundRules, Rounds
from bench.sweep.worker import StartWorker, WorkerError


@dataclass
class Sweep:
    """What the cases of one benchmark run share: options, references, the weights file, records."""

    progress_file: Path | None = None
    compile_cache: Path = field(default_factory=default_compile_cache)
    case_timeout: float = 900.0
    timing: bool = True  # False with --benchmark-disable: each case runs once, untimed, no cold compile
    min_rounds: int = 5
    max_time: float = 1.0
    target_ci: float = 0.02
    warm_up: float = WARM_UP_SECONDS  # seconds of untimed blocks before each worker set's rounds
    replicates: int = 3  # fresh worker processes per case, one after another, for the process's luck
    max_replicates: int = 12  # the most, while a comparison is undecided and the budget allows
    group_budget: float = 240.0  # seconds of sampling per group (rounds and fresh workers), after set-up
    margin: float = stats.MARGIN
    run_spread: float = stats.RUN_SPREAD
    max_minutes: float | None = None
    cases: list[RunConfig] = field(default_factory=list)  # the run's, for its groups and estimates
    announce: Callable[[str], None] | None = None  # progress lines, to the terminal
    start_worker: StartWorker = ProcessWorker  # InProcessWorker in tests that need no process
    records: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # measured, not yet handed over
    # Its parts, over the compile-cache folder: what the run keeps between its groups.
    references: References = field(init=False)
    choices: FormChoices = field(init=False)
    colds: ColdCompiles = field(init=False)
    estimates: Estimates = field(init=False)
    peaks: DevicePeaks = field(init=False)

    def __post_init__(self) -> None:
        files = KeptFiles(self._say)
        self.references = References(self.compile_cache, files, self.start_worker)
        self.choices = FormChoices(self.compile_cache, files)
        self.colds = ColdCompiles(self.compile_cache, files, self.choices, self.start_worker)
        self.estimates = Estimates(self.compile_cache, files, self.colds)
        self.peaks = DevicePeaks(self._say)

    # -- a case as pytest sees it -----------------------------------------------------------

    def run(self, config: RunConfig, benchmark) -> dict[str, Any]:
        """Measure ``config``'s group if that is not done yet; ``config``'s record into ``benchmark``.
        Raises CaseSkipped or CaseFailure for a case that produced no number."""
        if config.id not in self._pending:
            self.measure_group(self.group_of(config))
        record = self._pending.pop(config.id)
        if record["status"] in NOT_RUN:
            raise CaseSkipped(f"{record['status']}: {record['message']}")
        if record["status"] != "ok":
            raise CaseFailure(record["status"], record["message"])
        to_benchmark(benchmark, record.get("rounds_seconds", []))
        benchmark.extra_info.update(record)
        return record

    def group_of(self, config: RunConfig) -> list[RunConfig]:
        """``config`` and the run's other cases that compete with it, not yet measured."""
        key, measured = keys.group_key(config), {r["id"] for r in self.records}
        group = [c for c in self.cases if keys.group_key(c) == key and c.id not in measured]
        return group if config in group else [config]

    def record(self, record: dict[str, Any]) -> None:
        record[records.SCHEMA_KEY] = records.SCHEMA  # how bench/records.py reads it
        self.records.append(record)
        self._pending[record["id"]] = record
        if self.progress_file is not None:
            with self.progress_file.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        if self.announce is not None:
            count = len(self.cases) or len(self.records)
            left, _ = self.remaining()
            self.announce(progress_line(record, len(self.records), count, left))

    # -- a group ------------------------------------------------------------------------------

    def measure_group(self, configs: list[RunConfig]) -> None:
        """Set up each case of the group, then time their rounds interleaved; record every case."""
        prepared: list[Prepared] = []
        parts = 0
        current: dict[str, Any] | None = None
        setup = CaseSetup(
            self.compile_cache,
            self.references,
            self.choices,
            self.colds,
            self.start_worker,
            self.timing,
            self._say,
        )
        try:
            for config in configs:
                current = {"case": config.to_dict(), "id": config.id, "group": config.group}
                if self.out_of_time():
                    self.record({**current, "status": "skipped", "message": self._skip_reason()})
                    continue
                cannot = unavailable(config)
                if cannot is not None:  # by design, not a failure: no worker is started
                    self.record({**current, "status": cannot[0], "message": cannot[1]})
                    continue
                too_large = capacity.memory_problem(config)
                if too_large:  # rather than started and killed, with whatever else the kernel picks
                    self.record(
                        {**current, "status": "out-of-memory", "message": f"not started: {too_large}"}
                    )
                    continue
                crowded = capacity.crowded(prepared)
                if crowded:  # measure what is set up, then go on with a device of its own
                    parts += 1
                    self._time_and_record(prepared, f"sequential: {crowded}")
                    prepared = []
                started = time.perf_counter()
                deadline = time.monotonic() + self.case_timeout
                try:
                    try:
                        prepared.append(setup.prepare(config, current, started, deadline))
                    except WorkerError as error:
                        if error.status != "out-of-memory" or not prepared:
                            raise
                        # it may not fit beside the others: they are measured first, then it alone
                        parts += 1
                        self._time_and_record(prepared, "sequential: out of memory beside the others")
                        prepared = []
                        deadline = time.monotonic() + self.case_timeout
                        prepared.append(setup.prepare(config, current, started, deadline))
                except Exception as error:  # this case alone fails: the group goes on
                    current["case_wall_seconds"] = time.perf_counter() - started
                    self.record({**current, **failure(error)})
                current = None
            schedule = "interleaved" if parts == 0 else "sequential: the group's workers did not fit at once"
            self._time_and_record(prepared, schedule)
        except BaseException as error:
            recorded = {id(r) for r in self.records}
            failed = [p.record for p in prepared if id(p.record) not in recorded]
            if current is not None:
                failed.append(current)
            for p in prepared:
                p.worker.close()
            for record in failed:
                self.record({**record, **failure(error)})
            if not isinstance(error, Exception):
                raise  # Ctrl-C, SIGTERM: recorded, then the run stops as asked

    def _time_and_record(self, prepared: list[Prepared], schedule: str) -> None:
        rules = RoundRules(**{f.name: getattr(self, f.name) for f in fields(RoundRules)})
        rounds = Rounds(rules, self.references, self.start_worker)
        rounds_started = time.perf_counter()
        sampling = None
        if self.timing:
            failures, sampling = rounds.sample(prepared)
        else:
            failures = rounds.once(prepared)
        share = (time.perf_counter() - rounds_started) / max(1, len(prepared))
        for p in prepared:
            try:
                record = p.record
                error = failures.get(p) or rounds.retire(p)
                if error is not None:
                    record.update(status=error.status, message=str(error))
                else:
                    record.update(self._result(p, schedule))
                    record["status"] = "ok"
                    if sampling is not None:
                        record["sampling"] = sampling
                record["case_wall_seconds"] = p.setup_seconds + share
                record["phase_seconds"]["rounds"] = share
            finally:
                p.worker.close()
            if self.timing:
                self.estimates.remember(p)
            self.record(record)

    def _result(self, p: Prepared, schedule: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "peak_memory_bytes": p.peak_memory_bytes,
            "settings": p.worker.call("settings"),  # now: a runtime fills in its export at the first call
            "schedule": schedule,
        }
        if self.timing:
            info.update(rounds_seconds=p.rounds, round_blocks=p.blocks, round_workers=p.workers)
        info.update(extra_info(p, self.timing, self.peaks))
        if p.cold is not None:
            self.colds.keep(p.cold, Path(p.record["compile_folder"]), info["compile_seconds_cold"])
        return info

    # -- the run's time and the device's peak, as the plugin asks for them ----------------------

    def peak_tflops(self, config: RunConfig) -> float | str:
        return self.peaks.peak_tflops(config)

    def remaining(self) -> tuple[float, int]:
        """Seconds the cases not yet measured should take, and how many of them are guesses."""
        return self.estimates.remaining(self.cases, self.records, self.timing)

    def out_of_time(self) -> bool:
        return self.max_minutes is not None and time.monotonic() - self.started >= 60 * self.max_minutes

    def _skip_reason(self) -> str:
        elapsed = (time.monotonic() - self.started) / 60
        return (
            f"--max-minutes {self.max_minutes:g} reached ({elapsed:.1f} min into the run) "
            "before this case began"
        )

    def _say(self, line: str) -> None:
        if self.announce is not None:
            self.announce(line)
