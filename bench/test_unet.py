"""Training and inference throughput of the U-Net, one benchmark per case of the matrix.

The matrix and what is measured are in bench/plugin.py and bench/measure.py;
this module only hands cases to the sweep, which runs them in worker processes.
"""

from __future__ import annotations

import statistics

import pytest

from bench.measure import Sweep
from bench.runners.config import RunConfig
from bench.workers import Worker

ROUNDS = 20  # of the timer check, each way


def test_unet(case: RunConfig, sweep: Sweep, benchmark) -> None:
    benchmark.group = case.group
    sweep.run(case, benchmark)


def test_timer_agrees_with_a_hand_loop(bench_cases: list[RunConfig], sweep: Sweep, benchmark) -> None:
    """pytest-benchmark's median of one train step, over the worker's connection, against a plain
    perf_counter loop inside the same worker. The connection's own round trip, measured, is the
    one known difference between the two and is taken off pytest-benchmark's figure."""
    case = min(
        (c for c in bench_cases if c.task == "train"), key=lambda c: c.size * c.size * c.batch, default=None
    )
    if case is None:
        pytest.skip("no train case in the matrix")
    with Worker(case, compile_cache=sweep.compile_cache / "timer-check") as worker:
        worker.call("time_calls", 3)  # compiles
        # Half of the loop before, half after: drift falls on both sides. More rounds
        # than a case takes, so that the medians are steady on a noisy machine.
        seconds = worker.call("time_calls", ROUNDS // 2)
        benchmark.group = "timer check"
        sweep.time_rounds(worker, benchmark, min_rounds=ROUNDS)  # as every case is timed
        if benchmark.stats is None:
            pytest.skip("timing disabled")
        seconds += worker.call("time_calls", ROUNDS // 2)
        messaging = worker.messaging_seconds()
    stats = benchmark.stats.stats
    by_hand, by_plugin = statistics.median(seconds), stats.median - messaging
    # A bias of the timer shows beyond 5% and beyond the rounds' own spread.
    allowed = max(0.05, stats.iqr / stats.median)
    benchmark.extra_info.update(
        case=case.id,
        median_hand_loop=by_hand,
        median_pytest_benchmark=stats.median,
        messaging_seconds=messaging,
        allowed=allowed,
    )
    assert abs(by_plugin / by_hand - 1) <= allowed, (
        f"pytest-benchmark {stats.median:.4f}s less the round trip {messaging:.5f}s, hand loop "
        f"{by_hand:.4f}s: more apart than {allowed:.1%}"
    )
