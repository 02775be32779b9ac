"""Training and inference throughput of the U-Net, one benchmark per case of the matrix.

The matrix and what is measured are in bench/plugin.py and bench/sweep/;
this module only hands cases to the sweep, which runs them in worker processes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench import stats
from bench.pytest_benchmark_glue import to_benchmark
from bench.run_config import RunConfig
from bench.sweep import CaseSkipped, Sweep
from bench.sweep.process_worker import ProcessWorker
from bench.sweep.worker import time_round

MIN_PAIRS, MAX_SECONDS = 20, 60.0  # of the timer check
TIMER_TOLERANCE = 0.03


def test_unet(case: RunConfig, sweep: Sweep, benchmark) -> None:
    benchmark.group = case.group
    try:
        sweep.run(case, benchmark)
    except CaseSkipped as skipped:
        pytest.skip(str(skipped))


def test_timer_agrees_with_a_hand_loop(bench_cases: list[RunConfig], sweep: Sweep, benchmark) -> None:
    """The sweep's rounds (one call timed inside the worker) against a plain perf_counter loop
    around the same call from this process, in alternation over one worker, so that drift falls on
    both. The connection's round trip, measured, is the one known difference and is taken off the
    hand loop. A timer that misses work (an unsynchronised device, a lazy result) or counts
    something else shows as a ratio whose 95% interval lies wholly beyond 3% of 1."""
    case = min(
        (c for c in bench_cases if c.task == "train"), key=lambda c: c.size * c.size * c.batch, default=None
    )
    if case is None:
        pytest.skip("no train case in the matrix")
    if not sweep.timing:
        pytest.skip("timing disabled")
    if sweep.out_of_time():
        pytest.skip(f"--max-minutes {sweep.max_minutes:g} reached")
    rounds, by_hand = [], []
    with ProcessWorker(case, compile_cache=sweep.compile_cache / "timer-check") as worker:
        worker.call("time_calls", 3)  # compiles
        messaging = worker.messaging_seconds()
        started = time.perf_counter()
        while len(rounds) < MIN_PAIRS or (
            _ratio(rounds, by_hand, messaging).relative_half_width() > TIMER_TOLERANCE / 2
            and time.perf_counter() - started < MAX_SECONDS
        ):
            rounds.append(time_round(worker))
            start = time.perf_counter()
            worker.call("call")
            by_hand.append(time.perf_counter() - start)
    benchmark.group = "timer check"
    to_benchmark(benchmark, rounds)
    ratio = _ratio(rounds, by_hand, messaging)
    benchmark.extra_info.update(
        case=case.id,
        median_rounds=float(np.median(rounds)),
        median_hand_loop=float(np.median(by_hand)),
        messaging_seconds=messaging,
        ratio=[ratio.value, ratio.low, ratio.high],
        pairs=len(rounds),
    )
    assert ratio.low <= 1 + TIMER_TOLERANCE and ratio.high >= 1 - TIMER_TOLERANCE, (
        f"the sweep's rounds {np.median(rounds):.4f}s against the hand loop {np.median(by_hand):.4f}s "
        f"less the round trip {messaging:.5f}s: ratio {ratio.format(3)} over {len(rounds)} pairs, "
        f"wholly beyond {TIMER_TOLERANCE:.0%}"
    )


def _ratio(rounds: list[float], by_hand: list[float], messaging: float) -> stats.Interval:
    """The hand loop's time (less the round trip) over the rounds', paired by when they ran."""
    pairs = list(range(len(rounds)))
    return stats.speedup_interval((np.subtract(by_hand, messaging), pairs), (rounds, pairs))
