"""Data-parallel runners: one global batch over several devices, on each framework's own engine.

``DistributedRunner`` lives in the benchmark's process and drives worker
processes (``bench/runners/dp_worker.py``) over a local control connection:

- torch paths: ``torchrun`` starts one worker per device; the model is wrapped
  in DistributedDataParallel (NCCL on GPUs, gloo on CPU);
- jax: one worker process per host drives all its devices: the global batch is
  sharded over a ``jax.sharding.Mesh`` with ``NamedSharding``, parameters
  replicated, the whole step under ``jax.jit``. On a CPU the devices are
  simulated (``--xla_force_host_platform_device_count``).

BatchNorm uses per-device statistics by default, as DDP does (and, as DDP's
``broadcast_buffers`` does, device 0's running statistics win); ``sync_bn``
computes them over the global batch instead. Every wait on a worker is
bounded: a worker that dies or hangs raises ``DistributedError`` naming its
rank, with the end of its log.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any

import numpy as np

from impls.spec import UNetSpec

SETUP_TIMEOUT = 900.0  # seconds for a worker to start, build, load and connect
CALL_TIMEOUT = 600.0  # seconds for any one command, compilation included
LOG_TAIL = 2000  # characters of a failed rank's log quoted in the error


class DistributedError(RuntimeError):
    """A worker of a distributed run failed or stopped answering."""


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class DistributedRunner:
    """A data-parallel Runner: ``batch`` is the global batch, split evenly over ``devices``."""

    def __init__(
        self,
        path: str,
        spec: UNetSpec,
        *,
        batch: int,
        size: int,
        precision: str,
        device: str,
        devices: int,
        sync_bn: bool = False,
        tf32: bool = False,
        upconv: str = "auto",
        loss: str = "ce",
        learning_rate: float = 1e-4,
        setup_timeout: float = SETUP_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
        fault: str | None = None,
    ) -> None:
        if devices < 1 or batch % devices:
            raise ValueError(f"batch {batch} must split evenly over {devices} devices")
        self.path, self.device_name = path, device
        self.devices, self.call_timeout = devices, call_timeout
        self.log_dir = Path(tempfile.mkdtemp(prefix="unet-bench-dp-"))
        authkey = secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=authkey)
        config = {
            "path": path,
            "spec": json.loads(spec.to_json()),
            "batch": batch,
            "size": size,
            "precision": precision,
            "device": device,
            "devices": devices,
            "sync_bn": sync_bn,
            "tf32": tf32,
            "upconv": upconv,
            "loss": loss,
            "learning_rate": learning_rate,
            "address": list(self._listener.address),
            "authkey": authkey.hex(),
            "log_dir": str(self.log_dir),
        }
        env = dict(os.environ)
        if fault:
            env["UNET_BENCH_FAULT"] = fault  # tests: make a rank fail or hang on purpose
        worker = [sys.executable, "-m", "bench.runners.dp_worker", json.dumps(config)]
        if path == "jax":
            self._ranks = 1  # one process per host drives every local device
            if device == "cpu":
                flags = env.get("XLA_FLAGS", "")
                env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
            command = worker
        else:
            self._ranks = devices
            if device == "cpu":  # the cores are shared among the processes
                env["OMP_NUM_THREADS"] = str(max(1, _cpu_count() // devices))
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={devices}",
                "--max-restarts=0",
                *worker[1:],
            ]
        self._process = subprocess.Popen(
            command,
            env=env,
            stdout=(self.log_dir / "launcher.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its whole group can be killed
        )
        self._connections: dict[int, Connection] = {}
        try:
            self._accept(setup_timeout)
            self.settings = self._request({"command": "settings"}, setup_timeout)[0]
        except BaseException:
            self.close()
            raise

    # -- the control connection ---------------------------------------------------

    def _log_tail(self, rank: int) -> str:
        for name in (f"rank{rank}.log", "launcher.log"):
            log = self.log_dir / name
            if log.exists() and log.stat().st_size:
                return f"\n--- end of {log} ---\n" + log.read_text(errors="replace")[-LOG_TAIL:]
        return ""

    def _accept(self, timeout: float) -> None:
        def accept_all() -> None:
            while len(self._connections) < self._ranks:
                connection = self._listener.accept()
                self._connections[connection.recv()["rank"]] = connection

        thread = threading.Thread(target=accept_all, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.5)
            if self._process.poll() is not None and thread.is_alive():
                missing = sorted(set(range(self._ranks)) - set(self._connections))
                raise DistributedError(
                    f"{self.path} on {self.devices} devices: the workers exited "
                    f"(code {self._process.returncode}) before rank {missing[0]} connected"
                    + self._log_tail(missing[0])
                )
        if thread.is_alive():
            missing = sorted(set(range(self._ranks)) - set(self._connections))
            raise DistributedError(
                f"{self.path}: rank {missing[0]} did not connect within {timeout:.0f} s"
                + self._log_tail(missing[0])
            )

    def _request(self, message: dict, timeout: float | None = None) -> list[Any]:
        """Send ``message`` to every rank; their replies, in rank order."""
        timeout = self.call_timeout if timeout is None else timeout
        for rank, connection in self._connections.items():
            try:
                connection.send(message)
            except OSError as error:
                raise DistributedError(f"rank {rank} is gone ({error})" + self._log_tail(rank)) from error
        replies: dict[int, Any] = {}
        pending = dict(self._connections)
        deadline = time.monotonic() + timeout
        while pending:
            ready = wait(list(pending.values()), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:  # a hung rank stalls the others in collectives: name every silent one
                silent = sorted(pending)
                names = f"rank {silent[0]}" if len(silent) == 1 else "ranks " + ", ".join(map(str, silent))
                raise DistributedError(
                    f"{names} did not answer {message['command']!r} within {timeout:.0f} s"
                    + "".join(self._log_tail(rank) for rank in silent)
                )
            for rank in [r for r, c in pending.items() if c in ready]:
                try:
                    reply = pending.pop(rank).recv()
                except (EOFError, OSError) as error:
                    raise DistributedError(
                        f"rank {rank} died during {message['command']!r}" + self._log_tail(rank)
                    ) from error
                if "error" in reply:
                    raise DistributedError(f"rank {rank} failed {message['command']!r}: {reply['error']}")
                replies[rank] = reply["result"]
        return [replies[rank] for rank in sorted(replies)]

    def close(self) -> None:
        for connection in self._connections.values():
            try:
                connection.send({"command": "exit"})
                connection.close()
            except OSError:
                pass
        self._listener.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def __del__(self) -> None:
        if getattr(self, "_process", None) is not None and self._process.poll() is None:
            self.close()

    # -- the Runner interface -----------------------------------------------------

    def train_step(self) -> None:
        self._request({"command": "train_step"})

    def infer(self) -> None:
        self._request({"command": "infer"})

    def outputs(self, task: str) -> dict[str, np.ndarray]:
        """Eval-mode logits of the global batch, gathered from the ranks in order.

        Training in a data-parallel run is checked by the equivalence tests
        (tests/test_distributed.py), not by the parity gate.
        """
        if task != "infer":
            raise ValueError("a distributed runner's outputs are those of inference")
        return {"logits": np.concatenate(self._request({"command": "outputs"}))}

    def probe(self) -> dict[str, dict[str, np.ndarray]]:
        """One train step from the initial weights: rank 0's canonical gradients, and its
        weights and running statistics after the Adam update."""
        return self._request({"command": "probe"})[0]

    def messaging_seconds(self) -> float:
        """Median round trip of an empty command: the control overhead in every timed call."""
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            self._request({"command": "noop"})
            samples.append(time.perf_counter() - start)
        return float(np.median(samples))

    def reset_compilation(self) -> None:
        self._request({"command": "reset_compilation"})

    def reset_peak_memory(self) -> None:
        self._request({"command": "reset_peak_memory"})

    def peak_memory_bytes(self) -> int | None:
        peaks = self._request({"command": "peak_memory_bytes"})
        return None if any(p is None for p in peaks) else max(peaks)
