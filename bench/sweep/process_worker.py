"""The process-based worker: every measured case runs in fresh worker processes, started, called,
timed out and ended here.

``ProcessWorker(config)`` starts ``bench.runners.worker`` for one RunConfig (under
torchrun, one process per device, for a data-parallel torch case) and talks
to it over a local authenticated connection. Every wait is bounded; a worker
that fails is reported as a ``WorkerError`` (bench/sweep/worker.py).

Every process a ProcessWorker starts carries a marker in its environment, so that
``close`` ends all of them, torchrun's ranks (which it starts in sessions of
their own) included, whatever state they are in; ``leftover_processes`` finds
any that outlived their sweep. Imports no framework.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any

import psutil

from bench.environment import allocator
from bench.run_config import RunConfig
from bench.sweep.worker import Worker, WorkerError, status_of

START_TIMEOUT = 900.0  # seconds for a worker to start, build and connect
CALL_TIMEOUT = 3600.0  # seconds for one command, compilation included
LOG_TAIL = 2000  # characters of a failed worker's log quoted in the error
EXIT_WAIT = 3.0  # seconds a worker asked to exit gets before it is killed
WORKER_MARKER = "UNET_BENCH_WORKER"  # env: this worker's token
OWNER_MARKER = "UNET_BENCH_OWNER"  # env: the pid of the process that started it


# The lines of a worker's log that say why it ended: a Python exception's last line, or a fatal
# line of glog, as XLA writes one for an unknown flag in XLA_FLAGS before it aborts.
_PYTHON_ERROR = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception|Interrupt)\b.*")
_GLOG_FATAL = re.compile(r"^F\d{4} [\d:. ]+\d+ [\w.]+:\d+\] (.+)")


def _cause(log: str) -> str:
    """What a dead worker's log says last about why it ended, on one line ('' if nothing does)."""
    for line in reversed(log.splitlines()):
        fatal = _GLOG_FATAL.match(line.strip())
        if fatal:
            return fatal.group(1)
        if _PYTHON_ERROR.match(line.strip()):
            return line.strip()
    return ""


def oom_kills() -> int:
    """The kernel's count of OOM kills so far (system-wide); 0 where it does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _marked(name: str, value: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(name) == value:
                found.append(process)
    return found


def kill_marked(name: str, value: str) -> int:
    """SIGKILL every process whose environment has ``name=value``; how many there were."""
    processes = _marked(name, value)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=10)
    return len(processes)


def leftover_processes() -> list[psutil.Process]:
    """Live worker processes that ProcessWorkers of this process started (their ranks included)."""
    return [p for p in _marked(OWNER_MARKER, str(os.getpid())) if p.is_running()]


class ProcessWorker(Worker):
    """One case's worker process(es), over a local connection.

    ``compile_cache``: the folder of this case's on-disk compile caches (a
    fresh temporary one if None). ``deadline`` (time.monotonic()) bounds every
    wait: past it the worker is ended and ``timeout`` raised.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        compile_cache: str | Path | None = None,
        deadline: float | None = None,
        start_timeout: float = START_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
        connect: bool = True,
    ) -> None:
        self.config = config
        self.deadline, self.call_timeout = deadline, call_timeout
        self.log_dir = Path(tempfile.mkdtemp(prefix="unet-bench-worker-"))
        self.compile_cache = Path(compile_cache) if compile_cache else self.log_dir / "compile-cache"
        self._token = secrets.token_hex(8)
        self._oom_kills = oom_kills()
        self._connections: dict[int, Connection] = {}
        self._process: subprocess.Popen | None = None
        authkey = secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=authkey)
        arguments = {
            **config.to_dict(),
            "address": list(self._listener.address),
            "authkey": authkey.hex(),
            "compile_cache": str(self.compile_cache),
            "log_dir": str(self.log_dir),
        }
        env = {**os.environ, **allocator(), WORKER_MARKER: self._token, OWNER_MARKER: str(os.getpid())}
        command = [sys.executable, "-m", "bench.runners.worker", json.dumps(arguments)]
        # A torch data-parallel case: one process per device under torchrun; jax drives its devices from one.
        self._torchrun = config.devices is not None and config.framework == "torch"
        self._ranks = config.devices if self._torchrun else 1
        if self._torchrun:
            if config.device == "cpu":  # the cores are shared among the processes
                env["OMP_NUM_THREADS"] = str(max(1, _cpu_count() // config.devices))
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={config.devices}",
                "--max-restarts=0",
                *command[1:],
            ]
        try:
            self._process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=(self.log_dir / "launcher.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the sweep, which ends it
            )
        except BaseException:
            self.close()
            raise
        self._start_timeout = start_timeout
        if connect:
            self.connect()

    def connect(self) -> None:
        """Wait for the started worker to connect and build its case (``connect=False`` starts a
        worker without waiting, so that several start side by side: each is waited for here)."""
        try:
            self._accept(self._start_timeout)
            self.settings: dict[str, Any] = self.call("settings")
        except BaseException:
            self.close()
            raise

    # -- faults -------------------------------------------------------------------

    def _log_tail(self, rank: int = 0) -> str:
        for name in (f"rank{rank}.log", "launcher.log"):
            log = self.log_dir / name
            if log.exists() and log.stat().st_size:
                return f"\n--- end of {log.name} ---\n" + log.read_text(errors="replace")[-LOG_TAIL:]
        return ""

    def _timeout(self, limit: float) -> tuple[float, str]:
        """(seconds to wait, what the limit is called)."""
        if self.deadline is not None and self.deadline - time.monotonic() < limit:
            return max(0.0, self.deadline - time.monotonic()), "the case's time limit (--case-timeout)"
        return limit, f"{limit:.0f} s"

    def _died(self, rank: int, during: str) -> WorkerError:
        """The error for a worker that is gone: out of memory, a signal, or an exit code."""
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self._process.wait(timeout=10)
        tail = self._log_tail(rank)
        if oom_kills() > self._oom_kills:
            return WorkerError(
                "out-of-memory", f"rank {rank} was killed by the kernel's OOM killer {during}{tail}"
            )
        if self._torchrun or code is None:  # torchrun's log, quoted, says how its ranks ended
            how = "died"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        cause = _cause(tail)
        return WorkerError("crashed", f"rank {rank} {how} {during}{': ' + cause if cause else ''}{tail}")

    def _fail(self, error: WorkerError) -> WorkerError:
        self.close()
        return error

    # -- the connection -------------------------------------------------------------

    def _accept(self, start_timeout: float) -> None:
        """Every rank connects at once, then reports that its case is built (or why not)."""

        def accept_all() -> None:
            while len(self._connections) < self._ranks:
                with contextlib.suppress(OSError, EOFError):
                    connection = self._listener.accept()
                    self._connections[connection.recv()["rank"]] = connection

        thread = threading.Thread(target=accept_all, daemon=True)
        thread.start()
        limit, name = self._timeout(start_timeout)
        deadline = time.monotonic() + limit
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.2)
            if self._process.poll() is not None and thread.is_alive():
                missing = min(set(range(self._ranks)) - set(self._connections))
                raise self._fail(self._died(missing, "before it started"))
        if thread.is_alive():
            missing = min(set(range(self._ranks)) - set(self._connections))
            message = f"rank {missing} did not start within {name}" + self._log_tail(missing)
            raise self._fail(WorkerError("timeout", message))
        self._collect("build the case", max(0.0, deadline - time.monotonic()), name)

    def request(self, command: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Send ``command`` to every rank; their replies, in rank order."""
        if self._process is None or not self._connections:
            raise WorkerError("error", f"the worker of {self.config.id} is closed")
        limit, name = self._timeout(self.call_timeout if timeout is None else timeout)
        for rank, connection in self._connections.items():
            try:
                connection.send({"command": command, "args": args})
            except OSError:
                raise self._fail(self._died(rank, f"before {command!r}")) from None
        return self._collect(repr(command), limit, name)

    def _collect(self, what: str, limit: float, name: str) -> list[Any]:
        """One reply from every rank within ``limit`` seconds, in rank order."""
        replies: dict[int, Any] = {}
        pending = dict(self._connections)
        deadline = time.monotonic() + limit
        while pending:
            ready = wait(list(pending.values()), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:  # a hung rank stalls the others in collectives: name every silent one
                silent = sorted(pending)
                names = f"rank {silent[0]}" if len(silent) == 1 else "ranks " + ", ".join(map(str, silent))
                tails = "".join(self._log_tail(rank) for rank in silent)
                raise self._fail(
                    WorkerError("timeout", f"{names} did not answer {what} within {name}{tails}")
                )
            for rank in [r for r, c in pending.items() if c in ready]:
                try:
                    reply = pending.pop(rank).recv()
                except (EOFError, OSError):
                    raise self._fail(self._died(rank, f"during {what}")) from None
                if "error" in reply:
                    error = WorkerError(
                        status_of(reply["error"]), f"rank {rank} failed {what}: {reply['error']}"
                    )
                    raise self._fail(error)
                replies[rank] = reply["result"]
        return [replies[rank] for rank in sorted(replies)]

    def close(self) -> None:
        """Ask the worker to exit, then end every process it started, whatever their state."""
        for connection in self._connections.values():
            with contextlib.suppress(OSError):
                connection.send({"command": "exit"})
                connection.close()
        self._connections = {}
        self._listener.close()
        if self._process is not None:
            try:  # a worker in the middle of a command does not read "exit": not long
                self._process.wait(timeout=EXIT_WAIT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        kill_marked(WORKER_MARKER, self._token)  # torchrun's ranks live in sessions of their own
        shutil.rmtree(self.log_dir, ignore_errors=True)  # its logs, and its compile caches if its own
