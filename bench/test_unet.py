"""Training and inference throughput of the U-Net, one benchmark per case of the matrix.

The matrix (path x task x size x batch x precision on one device) and what is
measured are in bench/plugin.py and bench/measure.py; this module only asks
the runners, through the session.
"""

from __future__ import annotations

import statistics
import time

import pytest

from bench.measure import Case, Session

ROUNDS = 20  # of the timer check, each way


def test_unet(case: Case, bench_session: Session, benchmark) -> None:
    benchmark.group = case.group
    bench_session.run(case, benchmark)


def test_timer_agrees_with_a_hand_loop(bench_cases: list[Case], bench_session: Session, benchmark) -> None:
    """pytest-benchmark's median of one train step against a plain perf_counter loop, same runner."""
    case = min(
        (c for c in bench_cases if c.task == "train"), key=lambda c: c.size * c.size * c.batch, default=None
    )
    if case is None:
        pytest.skip("no train case in the matrix")
    runner = bench_session.make_runner(case)

    def hand_loop(rounds: int) -> list[float]:
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            runner.train_step()
            seconds.append(time.perf_counter() - start)
        return seconds

    for _ in range(3):
        runner.train_step()
    # Half of the loop before, half after: drift falls on both sides. More rounds
    # than a case takes, so that the medians are steady on a noisy machine.
    seconds = hand_loop(ROUNDS // 2)
    benchmark.group = "timer check"
    bench_session.time_rounds(runner.train_step, benchmark, min_rounds=ROUNDS)  # as every case is timed
    if benchmark.stats is None:
        pytest.skip("timing disabled")
    seconds += hand_loop(ROUNDS // 2)
    stats = benchmark.stats.stats
    by_hand, by_plugin = statistics.median(seconds), stats.median
    # A bias of the timer shows beyond 5% and beyond the rounds' own spread.
    allowed = max(0.05, stats.iqr / stats.median)
    benchmark.extra_info.update(
        case=case.id, median_hand_loop=by_hand, median_pytest_benchmark=by_plugin, allowed=allowed
    )
    assert abs(by_plugin / by_hand - 1) <= allowed, (
        f"pytest-benchmark {by_plugin:.4f}s, hand loop {by_hand:.4f}s: more apart than {allowed:.1%}"
    )
