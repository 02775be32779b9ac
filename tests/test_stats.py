"""bench/stats.py: the intervals against known distributions, and the rule's four outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from bench import stats


def _rounds(speedups: dict[str, float], blocks: int = 12, noise: float = 0.002, seed: int = 0) -> dict:
    """Each path's (seconds, blocks), a round per block, ``speedups[path]`` times faster than 0.1 s;
    every block's drift (up to 30%) falls on all paths, and each round has a little noise of its own."""
    rng = np.random.default_rng(seed)
    drift = rng.uniform(1.0, 1.3, blocks)
    return {
        path: (list(0.1 / speedup * drift * (1 + noise * rng.standard_normal(blocks))), list(range(blocks)))
        for path, speedup in speedups.items()
    }


def test_median_interval_covers_the_true_median_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    sigma, true_median = 0.2, 1.0  # lognormal(0, sigma): median exp(0)
    covered = [
        stats.median_interval(rng.lognormal(0.0, sigma, 15), resamples=300).contains(true_median)
        for _ in range(200)
    ]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_median_interval_without_enough_rounds() -> None:
    assert not stats.median_interval([0.1]).known
    assert stats.median_interval([0.1, 0.1, 0.1]) == stats.Interval(0.1, 0.1, 0.1)


def test_a_constant_ratio_under_shared_drift_gives_a_tight_speedup_interval() -> None:
    rounds = _rounds({"base": 1.0, "other": 1.25})
    interval = stats.speedup_interval(rounds["base"], rounds["other"])
    assert interval.contains(1.25)
    assert interval.relative_half_width() < 0.01  # the drift, 30% across blocks, cancels in the pairs


def test_speedup_pairs_only_the_blocks_both_paths_ran() -> None:
    baseline = ([0.2, 0.2, 9.9], [0, 1, 2])  # block 2: the other path never ran beside it
    other = ([0.1, 0.1], [0, 1])
    assert stats.speedup_interval(baseline, other).value == pytest.approx(2.0)
    assert np.isnan(stats.speedup_interval(baseline, ([0.1], [7])).value)


def _workers(speedups: dict[str, float], workers: int = 5, spread: float = 0.0, seed: int = 0) -> dict:
    """Each path's (seconds, blocks, workers): 4 blocks per worker, ``speedups[path]`` times faster than
    0.1 s, a drift per block on every path alike, and per worker a lognormal luck of ``spread``."""
    rng = np.random.default_rng(seed)
    blocks = np.arange(4 * workers)
    worker = blocks // 4
    drift = rng.uniform(1.0, 1.3, blocks.size)
    rounds = {}
    for path, speedup in speedups.items():
        luck = rng.lognormal(0.0, spread, workers)[worker] if spread else 1.0
        seconds = 0.1 / speedup * drift * luck * (1 + 0.002 * rng.standard_normal(blocks.size))
        rounds[path] = (list(seconds), list(blocks), list(worker))
    return rounds


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (1.06, 1.2, "faster"),
        (0.8, 0.95, "slower"),
        (0.96, 1.04, "equivalent"),
        (0.99, 1.08, "inconclusive"),  # neither clear of the margin nor inside it
        (1.0, 1.0501, "inconclusive"),
    ],
)
def test_four_outcomes_at_the_margin(low: float, high: float, expected: str) -> None:
    assert stats.outcome(stats.Interval((low + high) / 2, low, high), margin=0.05) == expected
    assert stats.outcome(stats.Interval(1.0, np.nan, np.nan)) == "inconclusive"


def test_a_clear_winner() -> None:
    judgement = stats.judge(
        _workers({"torch-eager": 1.0, "torch-compile": 1.3}), ["torch-eager", "torch-compile"]
    )
    assert judgement.best == "torch-compile" and judgement.verdict == "winner" and judgement.decided
    (comparison,) = judgement.comparisons
    assert comparison.path == "torch-eager" and comparison.outcome == "slower"
    assert judgement.describe().startswith(
        "torch-compile faster than every other path by more than 5% (torch-eager 0.7"
    )


def test_paths_within_the_margin_are_equivalent_and_a_slow_one_is_named_slower() -> None:
    rounds = _workers({"torch-eager": 1.0, "torch-compile": 1.01, "jax": 0.6})
    judgement = stats.judge(rounds, ["torch-eager", "torch-compile", "jax"])
    assert judgement.verdict == "equivalent" and judgement.decided
    assert judgement.equivalent_paths() == ["torch-compile", "torch-eager"]
    assert {c.path: c.outcome for c in judgement.comparisons} == {
        "torch-eager": "equivalent",
        "jax": "slower",
    }
    assert "equivalent within 5%: torch-compile, torch-eager" in judgement.describe()


def test_an_effect_on_the_margin_is_inconclusive_and_more_workers_would_not_decide_it() -> None:
    rounds = _workers({"torch-eager": 1.0, "torch-compile": 1.05}, spread=0.03, seed=3)
    judgement = stats.judge(rounds, ["torch-eager", "torch-compile"])
    assert judgement.verdict == "inconclusive" and not judgement.decided
    (comparison,) = judgement.comparisons
    assert comparison.workers == 5
    needed = comparison.workers_to_decide(0.05, 0.0)
    assert needed is None or needed > 5
    assert stats.judge(rounds, ["torch-eager", "torch-compile"], margin=0.2).verdict == "equivalent"


def test_an_open_comparison_says_how_many_workers_would_decide_it() -> None:
    rounds = _workers({"torch-eager": 1.0, "torch-compile": 1.15}, workers=3, spread=0.05, seed=0)
    judgement = stats.judge(rounds, ["torch-eager", "torch-compile"])
    (comparison,) = judgement.comparisons
    assert not comparison.decided  # 1.15x, but three workers 5% apart cannot tell it from 1.05x
    needed = comparison.workers_to_decide(0.05, 0.0)
    assert needed is not None and needed > 3
    assert judgement.minutes_to_decide(60.0) == pytest.approx(needed - 3)


def test_plain_references_are_compared_apart_and_leave_the_verdict_and_its_floor_as_they_were() -> None:
    rounds = _workers({"torch-eager": 1.0, "torch-compile": 1.3, "torch-plain": 0.97, "jax": 0.5}, 3, 0.04)
    competing = ["torch-eager", "torch-compile", "jax"]
    alone = stats.judge(rounds, competing)
    judged = stats.judge(rounds, competing, plain={"torch-eager": "torch-plain"})
    assert (judged.comparisons, judged.floor, judged.best) == (alone.comparisons, alone.floor, alone.best)
    (plain,) = judged.plain
    assert (plain.path, plain.against) == ("torch-eager", "torch-plain")
    assert plain.speedup.contains(1 / 0.97) or abs(plain.speedup.value - 1 / 0.97) < 0.05
    # the group is decided only when its plain comparison is too, so the sweep samples on for it
    assert judged.decided == (alone.decided and plain.decided)


def test_an_undecided_plain_comparison_leaves_the_group_undecided() -> None:
    rounds = _workers({"jax": 1.0, "torch-eager": 2.0, "jax-plain": 1.04}, workers=3, spread=0.05)
    judged = stats.judge(rounds, ["torch-eager", "jax"], plain={"jax": "jax-plain"})
    assert judged.comparisons[0].decided and not judged.plain[0].decided
    assert not judged.decided


def test_the_run_spread_widens_every_interval_and_can_leave_a_comparison_open() -> None:
    rounds = _workers({"torch-eager": 1.0, "torch-eager+0%": 1.0}, workers=8)
    tight = stats.judge(rounds, ["torch-eager"], {"torch-eager+0%": "torch-eager"})
    wide = stats.judge(rounds, ["torch-eager"], {"torch-eager+0%": "torch-eager"}, run_spread=0.03)
    assert tight.calibration[0].outcome == "equivalent" and tight.decided
    assert wide.calibration[0].outcome == "inconclusive"  # 1.96 * 0.03 alone is past a 5% margin
    assert wide.calibration[0].workers_to_decide(0.05, 0.03) is None
    assert wide.verdict == "alone" and tight.comparisons == ()


def test_one_estimate_orders_rates_and_speedups_alike() -> None:
    """The path named first is never slower than the next: the speed-up's point is the ratio of the
    two paths' estimates (the workers' median rounds, geometric mean), whatever the rounds' spread."""
    rng = np.random.default_rng(4)
    for trial in range(50):
        speedups = {"a": 1.0, "b": float(rng.uniform(0.97, 1.03)), "c": float(rng.uniform(0.9, 1.1))}
        rounds = _workers(speedups, workers=3, spread=0.05, seed=trial)
        judgement = stats.judge(rounds, list(speedups))
        best = stats.estimate(rounds[judgement.best])
        for c in judgement.comparisons:
            assert c.speedup.value <= 1.0
            assert c.speedup.value == pytest.approx(best / stats.estimate(rounds[c.path]))


def test_judge_needs_a_competing_path() -> None:
    with pytest.raises(ValueError, match="no competing paths"):
        stats.judge(_workers({"jax": 1.0}), [])


def test_interval_format() -> None:
    assert stats.Interval(1.05, 0.98, 1.12).format() == "1.05x [0.98, 1.12]"
    assert stats.Interval(1.05, np.nan, np.nan).format() == "1.05x"


def test_replicate_interval_covers_a_process_level_shift_about_95_percent_of_the_time() -> None:
    """Three worker processes, each with its own luck (a lognormal factor on all of its rounds):
    the t interval over their medians covers the true median in about 95% of runs, where a
    bootstrap over the pooled rounds, blind to the processes, covers far less."""
    rng = np.random.default_rng(2)
    workers = np.repeat([0, 1, 2], 10)
    by_process, pooled = [], []
    for _ in range(300):
        luck = rng.lognormal(0.0, 0.04, 3)[workers]  # 4% between processes
        seconds = luck * rng.lognormal(0.0, 0.01, workers.size)  # 1% between rounds
        by_process.append(stats.median_interval(seconds, workers=workers).contains(1.0))
        pooled.append(stats.median_interval(seconds, resamples=200).contains(1.0))
    assert 0.9 <= np.mean(by_process) <= 0.99
    assert np.mean(pooled) < 0.8


def test_speedups_from_several_workers_pair_blocks_within_each_and_are_taken_over_the_workers() -> None:
    blocks, workers = list(range(30)), [w for w in range(3) for _ in range(10)]
    baseline = [0.2] * 30
    other = [0.1 * (1.0, 1.1, 0.9)[w] for w in workers]  # 2x, 1.82x, 2.22x in the three processes
    interval = stats.speedup_interval((baseline, blocks, workers), (other, blocks, workers))
    assert interval.value == pytest.approx(2.0, rel=0.01)  # their geometric mean
    assert interval.low < 1.82 and interval.high > 2.22


def test_pooled_spread_recovers_a_known_worker_spread() -> None:
    rng = np.random.default_rng(3)
    cases = [rng.lognormal(np.log(rng.uniform(0.5, 2.0)), 0.05, 3) for _ in range(200)]
    spread = stats.pooled_spread(cases)
    assert spread.df == 400
    assert spread.sd == pytest.approx(0.05, rel=0.1)
    assert stats.pooled_spread([[1.0], [2.0]]) is None  # no case with two workers: nothing to pool
    assert stats.pooled_spread([[], [1.0, 1.1], [2.0]]).df == 1  # cases without two workers add nothing


def test_a_floor_widens_an_interval_that_three_agreeing_workers_made_narrow() -> None:
    floor = stats.Spread(sd=0.05, df=30)
    lucky = stats.replicate_interval([1.0, 1.0, 1.0], floor)
    half = stats.stats.t.ppf(0.975, 30) * 0.05 / np.sqrt(3)
    assert (lucky.low, lucky.high) == pytest.approx((np.exp(-half), np.exp(half)))
    assert stats.replicate_interval([1.0, 1.0, 1.0]) == stats.Interval(1.0, 1.0, 1.0)
    wide = [0.8, 1.0, 1.25]  # a case noisier than the floor keeps its own, wider interval
    assert stats.replicate_interval(wide, floor) == stats.replicate_interval(wide)


def test_floored_intervals_hold_a_rerun_more_often_than_the_workers_alone() -> None:
    """Two runs of 16 cases, three workers a case, each worker's estimate lognormal around the
    case's true speed-up (5% spread): the share of the second run's estimates inside the first's
    intervals, over many such pairs. The t interval over three workers alone holds about 91% (in
    theory; real reruns here, with their own session-to-session shifts, 81% and 88%): its spread,
    from two degrees of freedom, is often far too small. With the pooled floor more land inside,
    and at least 90%, the bar a rerun of `make bench` is held to. Both still cover the true value
    at least 95% of the time."""
    rng = np.random.default_rng(4)
    alone, floored, true_alone, true_floored = [], [], [], []
    for _ in range(300):
        truth = rng.uniform(0.5, 1.5, 16)
        first, second = (truth[:, None] * rng.lognormal(0.0, 0.05, (16, 3)) for _ in range(2))
        floor = stats.pooled_spread(first)
        again = np.exp(np.log(second).mean(axis=1))
        for workers, rerun, true in zip(first, again, truth, strict=True):
            own, wider = stats.replicate_interval(workers), stats.replicate_interval(workers, floor)
            alone.append(own.contains(rerun))
            floored.append(wider.contains(rerun))
            true_alone.append(own.contains(true))
            true_floored.append(wider.contains(true))
    assert np.mean(floored) >= 0.9 and np.mean(floored) > np.mean(alone)
    assert 0.94 <= np.mean(true_alone) <= np.mean(true_floored) <= 0.995
