"""A case in the sweep: how it ends when it produces no number, and its state between set-up and
rounds."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from bench import gate, records
from bench.run_config import RunConfig
from bench.sweep.worker import Worker, WorkerError

# Statuses of cases that did not run and did not fail: pytest skips them
NOT_RUN = ("skipped", *records.BY_DESIGN)


class CaseFailure(Exception):
    """A case that produced no number; ``status`` says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class CaseSkipped(Exception):
    """A case not started (``--max-minutes`` was reached) or that its path cannot run (``NOT_RUN``)."""


def failure(error: BaseException) -> dict[str, Any]:
    """The status and message a case is recorded with when ``error`` ended it."""
    if isinstance(error, CaseFailure | WorkerError):
        return {"status": error.status, "message": str(error)}
    if isinstance(error, Exception):
        return {
            "status": "error",
            "message": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
        }
    return {"status": "interrupted", "message": "the run was stopped during this case"}


def parity_failure(config: RunConfig, result: gate.GateResult, replicate: int = 0) -> str:
    worker = f" (worker {replicate + 1} of the case)" if replicate else ""
    return (
        f"parity gate: {config.path}{worker} differs from torch eager fp32: {result.describe()}; "
        "no number is reported for it"
    )


@dataclass(eq=False)  # one per worker, told apart by identity
class Prepared:
    """A case whose worker has compiled, passed the gate and waits for its rounds."""

    config: RunConfig
    worker: Worker
    record: dict[str, Any]
    setup_seconds: float  # references, workers, compiles and the gate: its own, not its group's
    cold: dict[str, Any] | None
    first_cached: float
    peak_memory_bytes: int | None = None  # the largest of its workers' peaks that hold no gate
    footprint_bytes: int | None = None  # its first worker's peak through set-up and gate: to schedule by
    # The worker now: went through the gate before its rounds (the others are checked after),
    # and its peak holds none of the gate's allocations (read before any check, or reset after it).
    gated: bool = True
    peak_counts: bool = True
    rounds: list[float] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)  # the replicate (worker process) of each round
    # Its own wall time so far, set-up included, against --case-timeout: what its workers took, not
    # the rounds of the other paths interleaved with its own.
    spent: float = 0.0

    def __post_init__(self) -> None:
        self.spent = self.setup_seconds


class Laps:
    """Seconds since the last lap, filed under a name."""

    def __init__(self, laps: dict[str, float]) -> None:
        self.laps, self.last = laps, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now
