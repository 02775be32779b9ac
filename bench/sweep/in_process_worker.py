"""A worker that runs its case's runner in this process: for tests of the sweep's scheduling and
records, which then start no process (a worker process takes seconds to start and import).

What only a process gives is not here: its own process-wide settings (compile caches, precision
flags, simulated devices), its own peak memory, and being ended mid-call. A call that ran past the
worker's deadline is a timeout all the same, once it returns. Data-parallel cases need processes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.run_config import RunConfig
from bench.sweep.worker import Worker, WorkerError, status_of


class InProcessWorker(Worker):
    """``bench.runners.worker``'s Service over a runner built here; the framework is imported here."""

    def __init__(
        self,
        config: RunConfig,
        *,
        compile_cache: str | Path | None = None,
        deadline: float | None = None,
        connect: bool = True,
    ) -> None:
        if config.devices is not None:
            raise ValueError(f"{config.id}: a data-parallel case runs in worker processes")
        self.config, self.deadline = config, deadline
        self.compile_cache = Path(compile_cache) if compile_cache else Path()
        self._handlers: dict[str, Any] = {}
        if connect:
            self.connect()

    def connect(self) -> None:
        from bench.runners import build
        from bench.runners.worker import Service

        try:
            self._handlers = Service(self.config, build(self.config)).handlers()
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            raise WorkerError(status_of(message), f"rank 0 failed build the case: {message}") from error
        self.settings: dict[str, Any] = self.call("settings")

    def request(self, command: str, *args: Any, timeout: float | None = None) -> list[Any]:
        if not self._handlers:
            raise WorkerError("error", f"the worker of {self.config.id} is closed")
        try:
            reply = self._handlers[command](*args)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            raise WorkerError(status_of(message), f"rank 0 failed {command!r}: {message}") from error
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.close()
            raise WorkerError(
                "timeout", f"rank 0 did not answer {command!r} within the case's time limit (--case-timeout)"
            )
        return [reply]

    def close(self) -> None:
        self._handlers = {}
