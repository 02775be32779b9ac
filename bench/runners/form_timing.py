"""Interchangeable exact forms of one computation, timed where they run, the faster one chosen.

A framework supplies, per form, a callable that runs it once and returns when
the device has finished; this times them all the same way. No framework here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from impls.spec import UNetSpec

WARM_UP, REPEATS = 1, 3


def time_forms(forms: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds per form: the best of REPEATS calls after WARM_UP (compilation, autotuning).

    The timed calls take turns (A B A B ...), so that the machine's drift falls on every form.
    """
    for run in forms.values():
        for _ in range(WARM_UP):
            run()
    samples: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(REPEATS):
        for name, run in forms.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: min(seconds) for name, seconds in samples.items()}


def fastest(seconds: Mapping[str, float]) -> str:
    return min(seconds, key=seconds.get)


def largest_upconv(spec: UNetSpec, size: int) -> tuple[int, int, int] | None:
    """The up-conv the forms are timed on, the largest: its input and output channels and its
    input's side (about); None for a network with no transposed conv."""
    if spec.upsample != "transpose":
        return None
    return spec.channels(1), spec.channels(0), spec.check_side(size) // 2 + 1
