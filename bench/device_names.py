"""A device as runs name it: ``cpu``, ``cuda`` (the first GPU) or ``cuda:N``. No framework here."""

from __future__ import annotations

import re


def well_formed(device: str) -> bool:
    """Whether ``device`` is one of the names above (whether it is here is bench.environment's)."""
    return re.fullmatch(r"cpu|cuda(:\d+)?", device) is not None


def cuda_index(device: str) -> int:
    """The GPU's index: N of ``cuda:N``, 0 of ``cuda``."""
    return int(device.partition(":")[2] or 0)


def simulated_devices(device: str) -> bool:
    """Whether a data-parallel case on ``device`` runs on simulated devices: on a CPU, its devices
    are processes (torch) or XLA host devices (jax) sharing the one CPU."""
    return device == "cpu"
