"""The worker front end's interface: what the sweep asks of a case's worker, whatever runs it.

Two implementations: ``ProcessWorker`` (bench/sweep/process_worker.py), fresh processes, as every
measured case runs; ``InProcessWorker`` (bench/sweep/in_process_worker.py), the runner in this
process, for tests of the sweep's scheduling and records that need no process of their own. A
failed worker is a ``WorkerError`` whose ``status`` says how:

- ``error``: a command raised (its message is quoted);
- ``not-applicable``: the runner refused the case as one its path cannot run (``NotApplicable``);
- ``out-of-memory``: the framework said so, or the kernel's OOM killer ended it;
- ``crashed``: it died (its signal or exit code and the end of its log are quoted);
- ``timeout``: it did not answer in time (the case's ``--case-timeout`` or a command's limit).

Imports no framework.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.run_config import NotApplicable, RunConfig

OOM_TEXT = ("out of memory", "outofmemory", "resource_exhausted", "memoryerror", "unable to allocate")


class WorkerError(RuntimeError):
    """A worker failed or stopped answering; ``status`` says how."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(message: str) -> str:
    """ "out-of-memory", "not-applicable" (a runner's NotApplicable) or "error" for an error message."""
    if message.startswith(f"{NotApplicable.__name__}:"):
        return "not-applicable"
    return "out-of-memory" if any(t in message.lower() for t in OOM_TEXT) else "error"


def _gathered(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's outputs, its logits those of every rank in order (the ranks' rows of the batch)."""
    return {**replies[0], "logits": np.concatenate([r["logits"] for r in replies])}


class Worker(abc.ABC):
    """One case's worker: ``request`` sends a command to each of its ranks (bench/runners/worker.py's
    ``Service``); the Runner interface and the sweep's other calls are written once, over it.

    ``deadline`` (time.monotonic()) bounds every wait; ``settings`` are the runner's, once connected.
    """

    config: RunConfig
    compile_cache: Path
    deadline: float | None
    settings: dict[str, Any]

    @abc.abstractmethod
    def connect(self) -> None:
        """Wait for the case to be built (a worker started with ``connect=False``)."""

    @abc.abstractmethod
    def request(self, command: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """``command`` on every rank; their replies, in rank order."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the worker, whatever its state."""

    def call(self, command: str, *args: Any, timeout: float | None = None) -> Any:
        """``command`` on every rank; rank 0's reply."""
        return self.request(command, *args, timeout=timeout)[0]

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Runner interface ---------------------------------------------------------

    def train_step(self) -> None:
        self.request("train_step")

    def infer(self) -> None:
        self.request("infer")

    def outputs(self, task: str, seed: int = 0) -> dict[str, Any]:
        """Rank 0's outputs on the batch drawn with ``seed`` (bench/runners/workload.py's SEED: the
        timed one); a data-parallel run's logits gathered from the ranks in order."""
        return _gathered(self.request("outputs", task, seed))

    def outputs_in(
        self, precision: str, task: str, seed: int = 0, memory_format: str | None = None
    ) -> dict[str, Any]:
        """``outputs`` of the same case in another precision or memory format (bench/runners/worker.py)."""
        return _gathered(self.request("outputs_in", precision, task, seed, memory_format))

    def reset_state(self) -> None:
        self.request("reset_state")

    def weights(self) -> dict[str, np.ndarray]:
        return self.call("weights")

    def peak_memory_bytes(self) -> int | None:
        peaks = self.request("peak_memory_bytes")
        return None if any(p is None for p in peaks) else max(peaks)

    def messaging_seconds(self) -> float:
        """Median round trip of an empty command: the control overhead in every timed call."""
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            self.request("noop")
            samples.append(time.perf_counter() - start)
        return float(np.median(samples))


# How the sweep starts a case's worker: ProcessWorker or InProcessWorker, called as
# (config, *, compile_cache=None, deadline=None, connect=True).
StartWorker = Callable[..., Worker]


def time_round(worker: Worker) -> float:
    """One round: one call, timed inside the worker with the device synchronised."""
    return worker.call("time_calls", 1)[0]
