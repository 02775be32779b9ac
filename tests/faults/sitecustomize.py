"""Faults injected into worker processes, for the tests of the worker front end and the sweep.

On PYTHONPATH (``tests.faults.environment``), this runs at every interpreter's start; in a worker
process (``python -m bench.runners.worker``, under torchrun too) it wraps the commands the worker
answers, as ``UNET_BENCH_FAULT`` asks: "rank=R,path=P,command=C,action=A" makes rank R of a path-P
worker fail at command C; any other RunConfig field narrows it further (``size=32``). Actions:
``exit`` (code 3), ``hang``, ``signal`` (SIGSEGV), ``oom`` (an allocation that fails). Every other
process is left as it is. The production worker knows nothing of this.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time

WORKER = "bench.runners.worker"
_run_module_as_main = runpy._run_module_as_main  # how `python -m` runs a module: the worker wrapped there


def _asked(rank: int, case: dict) -> tuple[str | None, str | None]:
    """(command, action) of the fault asked for this rank and case; (None, None) if none."""
    fields = dict(
        item.split("=", 1) for item in os.environ.get("UNET_BENCH_FAULT", "").split(",") if "=" in item
    )
    if int(fields.get("rank", -1)) != rank:
        return None, None
    if any(str(case[name]) != value for name, value in fields.items() if name in case):
        return None, None
    return fields.get("command"), fields.get("action")


def _inject(rank: int, command: str, action: str | None) -> None:
    print(f"rank {rank}: injected fault {action!r} at {command!r}", flush=True)
    if action == "hang":
        time.sleep(10**6)
    if action == "signal":
        os.kill(os.getpid(), signal.SIGSEGV)
    if action == "oom":
        import numpy as np

        np.ones(1 << 60, np.uint8)  # MemoryError: Unable to allocate 1.00 EiB
    os._exit(3)


def _faulty_worker(name: str, alter_argv: bool = True):
    if name != WORKER:
        return _run_module_as_main(name, alter_argv)
    from bench.runners import worker

    handlers = worker.Service.handlers

    def with_fault(service: worker.Service) -> dict:
        found = handlers(service)
        rank = int(os.environ.get("RANK", 0))
        command, action = _asked(rank, service.config.to_dict())
        if command in found:
            answer = found[command]

            def faulty(*args):
                _inject(rank, command, action)
                return answer(*args)

            found[command] = faulty
        return found

    worker.Service.handlers = with_fault
    sys.argv[0] = worker.__file__
    sys.exit(worker.main(sys.argv[1:]))


if os.environ.get("UNET_BENCH_FAULT"):
    runpy._run_module_as_main = _faulty_worker
