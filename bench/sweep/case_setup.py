"""One case's set-up: its reference, its forms, its cold compile, the worker that will time its
rounds (its first call from the caches), and the parity gate."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.run_config import PLAIN_PATHS, RunConfig, compiles_nothing
from bench.sweep.case import CaseFailure, Laps, Prepared, parity_failure
from bench.sweep.cold import ColdCompiles
from bench.sweep.form_choices import FormChoices
from bench.sweep.references import References
from bench.sweep.worker import StartWorker, WorkerError


@dataclass
class CaseSetup:
    """Prepares cases: ``timing`` False (--benchmark-disable) measures no cold compile."""

    compile_cache: Path
    references: References
    choices: FormChoices
    colds: ColdCompiles
    start_worker: StartWorker
    timing: bool
    say: Callable[[str], None]

    def prepare(self, config: RunConfig, record: dict[str, Any], started: float, deadline: float) -> Prepared:
        """``config`` compiled, gated and ready for its rounds; ``record`` gets its set-up's facts."""
        case = config
        lap = Laps(record.setdefault("phase_seconds", {}))  # what the case's time went on
        self.references.reference(config, deadline)
        lap("reference")
        asked = config.replace(weights_file=str(self.references.weights_file(config)))
        config = self.choices.pin(asked, self.timing)
        # Untimed (--benchmark-disable, as in `make test`) nothing is measured: the cases share one
        # folder, as a user's programs share the frameworks' caches, and compile once what they can.
        folder = self.compile_cache / "untimed"
        cold = None
        if self.timing and not compiles_nothing(config.path):
            cold, config, folder = self.colds.cold(asked, deadline)
            lap("cold_worker")
        elif self.timing:
            folder = self.colds.folder(asked)
        folder.mkdir(parents=True, exist_ok=True)
        worker = self.start_worker(config, compile_cache=folder, deadline=deadline)
        lap("worker_start")
        try:
            first_cached = worker.call("first_call")
            lap("first_call")
        except WorkerError as error:
            worker.close()
            if cold is None or not cold["reused"] or error.status not in ("error", "crashed"):
                raise
            # What an earlier run compiled did not load: compiled again, once, from an emptied folder
            # (the retry finds no cold figure to reuse, so it cannot come back here).
            self.say(
                f"{case.id}: the compiled code kept in {folder} did not load "
                f"({str(error).splitlines()[0]}); the folder is cleared and the case compiled again"
            )
            shutil.rmtree(folder, ignore_errors=True)
            return self.prepare(case, record, started, deadline)
        except BaseException:
            worker.close()
            raise
        try:
            config = self.choices.remember(config, worker.settings, self.timing)
            if self.timing and cold is None:  # compiles nothing, caches nothing: one worker
                cold = {"first_call_seconds": first_cached, "reused": False, "no_compiler": True}
            result = self.references.check(config, worker, deadline)
            if not result.passed:
                raise CaseFailure("parity-failed", parity_failure(config, result))
            record.update(
                forms=None if config.path in PLAIN_PATHS else self.choices.by_owner(config),
                parity={"errors": result.errors, "allowed": result.allowed},
                messaging_seconds=worker.messaging_seconds(),
                compile_folder=str(folder),
            )
            footprint = worker.peak_memory_bytes()
            peak_counts = worker.call("reset_peak_memory")  # the gate's allocations out of the figure
            lap("parity_gate")
        except BaseException:
            worker.close()
            raise
        return Prepared(
            config,
            worker,
            record,
            time.perf_counter() - started,
            cold,
            first_cached,
            footprint_bytes=footprint,
            peak_counts=peak_counts,
        )
