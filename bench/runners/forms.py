"""Interchangeable exact forms of one computation, timed where they run, the faster one chosen.

A framework supplies, per form, a callable that runs it once and returns when
the device has finished; this times them all the same way. No framework here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

WARM_UP, REPEATS = 1, 3


def time_forms(forms: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds per form: the best of REPEATS calls after WARM_UP (compilation, autotuning)."""
    seconds = {}
    for name, run in forms.items():
        samples = []
        for _ in range(WARM_UP + REPEATS):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        seconds[name] = min(samples[WARM_UP:])
    return seconds


def fastest(seconds: Mapping[str, float]) -> str:
    return min(seconds, key=seconds.get)
