"""Peak resident memory of this process on a CPU.

Every case runs in worker processes of its own, so a worker's high-water
mark of resident memory (Linux's VmHWM) is that case's peak: the framework's
runtime and compiled code, the model, optimizer state, batch and activations,
by the same method for every framework.
"""

from __future__ import annotations

from pathlib import Path

CPU_METHOD = (
    "peak resident size of the worker process (VmHWM): framework runtime, compiled code, weights, "
    "optimizer state, batch and activations"
)

_STATUS = Path("/proc/self/status")


def peak_rss() -> int | None:
    """This process's peak resident size in bytes since it started; None where Linux does not say."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None
