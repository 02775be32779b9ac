"""The one place the harness uses pytest-benchmark's private API.

Rounds are timed inside worker processes, not by pytest-benchmark's own timer (which would also
count the messaging); pytest-benchmark has no public call to hand it rounds timed elsewhere, so
they are fed to the stats object its fixture makes for itself (``_make_stats``), and the fixture
is marked used (``_mode``) as ``pedantic()`` would mark it. A pytest-benchmark release that
changes these names breaks only this module.
"""

from __future__ import annotations

from typing import Any


def to_benchmark(benchmark: Any, seconds: list[float]) -> None:
    """Hand rounds timed in a worker to pytest-benchmark, which keeps them in benchmark.json and
    its tables as if it had timed them."""
    benchmark._mode = "rounds timed in a worker"  # used once, as pedantic() would mark it
    if not seconds:  # untimed (--benchmark-disable): nothing to keep
        return
    metadata = benchmark._make_stats(1)
    for value in seconds:
        metadata.update(value)
