"""Peak resident memory of this process on a CPU, per benchmark case.

Linux keeps a high-water mark of resident memory (VmHWM) that writing "5" to
/proc/self/clear_refs resets to the current resident size. A case's peak is
the high-water mark over its timed steps minus the resident size before the
case built anything (after garbage collection and returning free heap pages to
the OS with glibc's malloc_trim): the memory the case itself needed for its
model, optimizer state, activations and compiled code.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path

METHOD = "peak resident memory of the timed steps minus resident memory before the case (bench/memory.py)"

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def settle() -> int | None:
    """Collect garbage, return free heap pages to the OS; the resident size after it."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status_bytes("VmRSS")


def reset_peak() -> bool:
    """Reset the high-water mark to the current resident size; False where Linux does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak() -> int | None:
    return _status_bytes("VmHWM")
