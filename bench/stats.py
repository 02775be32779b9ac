"""Confidence intervals from timed rounds, and the rule that turns them into a verdict.

No framework here: numpy and scipy only. The bootstrap is scipy's; it is seeded,
so that one run's figures are the same however often its report is rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
# A path is called faster only when its speed-up interval over the runner-up lies wholly above
# 1 + NOISE_THRESHOLD; closer than that is a tie, whatever the intervals say: a run's intervals cannot
# see what moves a whole session. Measured basis: the 48 speed-ups of three pairs of consecutive
# default CPU runs (results/...-cores-5 and -6, -8 and -9, -9 and -10; `--compare` prints each pair's
# shifts) moved between the runs by a median of 3% and by less than 11.2% in 9 cases of 10 (at most
# 17%). The first threshold, 5%, rested on one pair whose shifts stayed under 6%; at 5% the next
# pair's verdicts split (-cores-11 called torch-compile's training faster at 1.10x [1.06, 1.15],
# -cores-12 a tie at 1.09x [0.98, 1.21]). No GPU has two runs yet: the CPU's figure stands in there,
# erring towards ties.
NOISE_THRESHOLD = 0.11


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% confidence interval (nan bounds when it has too few rounds)."""

    value: float
    low: float
    high: float

    @property
    def known(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))

    def relative_half_width(self) -> float:
        """The interval's larger side as a share of the value: +-2% is 0.02."""
        if not self.known:
            return float("inf")
        return max(self.high - self.value, self.value - self.low) / self.value

    def above(self, threshold: float) -> bool:
        return self.known and self.low > threshold

    def below(self, threshold: float) -> bool:
        return self.known and self.high < threshold

    def contains(self, value: float) -> bool:
        return self.known and self.low <= value <= self.high

    def format(self, digits: int = 2, suffix: str = "x") -> str:
        """``1.05x [0.98, 1.12]``; without an interval, the value alone."""
        text = f"{self.value:.{digits}f}{suffix}"
        if self.known:
            text += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return text


def _bootstrap(samples: tuple, statistic, paired: bool, resamples: int) -> tuple[float, float]:
    result = stats.bootstrap(
        samples,
        statistic,
        paired=paired,
        vectorized=True,
        confidence_level=CONFIDENCE,
        n_resamples=resamples,
        method="percentile",  # BCa is unstable for a median of few rounds
        rng=np.random.default_rng(SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class Spread:
    """The standard deviation of one worker process's log estimate around its case's mean, pooled
    over a run's cases, and its degrees of freedom."""

    sd: float
    df: int


def pooled_spread(estimates: Iterable[Sequence[float]]) -> Spread | None:
    """The worker-to-worker spread of a run: each case's per-worker estimates (times or speed-ups)
    pooled on the log scale; None without a case of two workers or more."""
    logs = [np.log(np.asarray(e, dtype=float)) for e in estimates]
    residuals = [case - case.mean() for case in logs if case.size > 1]
    df = sum(case.size - 1 for case in residuals)
    if df == 0:
        return None
    return Spread(float(np.sqrt(sum(float((case**2).sum()) for case in residuals) / df)), df)


def replicate_interval(values: Sequence[float], floor: Spread | None = None) -> Interval:
    """The geometric mean of one estimate per worker process, with a 95% t interval on its log;
    with ``floor``, the wider of that and the interval the run's pooled spread gives.

    A worker process has its own luck (memory placement, threads, caches) that all of its rounds
    share: seen here, one path 2-7% slower in the next run's processes, three times what the
    rounds' own interval allowed. Fresh workers are the units that sample it; there are few of
    them, hence Student's t rather than a bootstrap, which is too narrow on a handful of values.
    Three workers estimate their own spread badly (one case in ten comes out below a third of the
    true one), so the machine's spread, pooled over the run's cases, is a floor: each interval is
    valid whether the cases share a spread or each has its own. (Committed CPU runs -cores-8, -9
    and -10: each rerun's speed-ups fell outside 3 and 2 of 16 intervals of the t alone, 1 and 1
    with the floor.)
    """
    logs = np.log(np.asarray(values, dtype=float))
    centre = float(np.exp(logs.mean()))
    if logs.size < 2:
        return Interval(centre, float("nan"), float("nan"))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, logs.size - 1) * stats.sem(logs) if np.ptp(logs) > 0 else 0.0
    if floor is not None:
        half = max(half, stats.t.ppf((1 + CONFIDENCE) / 2, floor.df) * floor.sd / np.sqrt(logs.size))
    return Interval(centre, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)))


def _by_worker(rounds: Sequence[Sequence]) -> dict[int, tuple[list[float], list[int]]]:
    """(seconds, blocks) of each worker process's rounds; one worker where none are named."""
    seconds, blocks = rounds[0], rounds[1]
    workers = rounds[2] if len(rounds) > 2 else [0] * len(seconds)
    split: dict[int, tuple[list[float], list[int]]] = {}
    for value, block, worker in zip(seconds, blocks, workers, strict=True):
        split.setdefault(int(worker), ([], []))
        split[int(worker)][0].append(float(value))
        split[int(worker)][1].append(int(block))
    return split


def worker_medians(seconds: Sequence[float], workers: Sequence[int]) -> list[float]:
    """Each worker process's median round."""
    split = _by_worker((seconds, [0] * len(seconds), workers))
    return [float(np.median(values)) for values, _ in split.values()]


def median_interval(
    seconds: Sequence[float],
    resamples: int = RESAMPLES,
    workers: Sequence[int] | None = None,
    floor: Spread | None = None,
) -> Interval:
    """The median of the rounds with a bootstrap 95% interval over the rounds; where the rounds
    came from several worker processes (``workers``), over the processes' medians instead, no
    narrower than the run's spread ``floor`` allows."""
    if workers is not None and len(set(workers)) > 1:
        return replicate_interval(worker_medians(seconds, workers), floor)
    samples = np.asarray(seconds, dtype=float)
    median = float(np.median(samples))
    if samples.size < 2 or np.ptp(samples) == 0:
        return Interval(median, *((median, median) if samples.size >= 2 else (np.nan, np.nan)))
    low, high = _bootstrap(
        (samples,), lambda x, axis: np.median(x, axis=axis), paired=False, resamples=resamples
    )
    return Interval(median, low, high)


def block_medians(seconds: Sequence[float], blocks: Sequence[int]) -> dict[int, float]:
    """Each block's median round: the unit that pairs one path's rounds with another's."""
    by_block: dict[int, list[float]] = {}
    for value, block in zip(seconds, blocks, strict=True):
        by_block.setdefault(int(block), []).append(float(value))
    return {block: float(np.median(values)) for block, values in by_block.items()}


def worker_speedups(baseline: Sequence[Sequence], other: Sequence[Sequence]) -> list[float]:
    """One speed-up per worker process the two share, its blocks paired (as speedup_interval);
    empty where they share fewer than two."""
    first_split, second_split = _by_worker(baseline), _by_worker(other)
    shared = sorted(set(first_split) & set(second_split))
    if len(shared) < 2:
        return []
    # the point estimate alone: a bootstrap per worker would be thrown away
    ratios = [_median_ratio(*_paired_blocks(first_split[w], second_split[w])) for w in shared]
    return [r for r in ratios if np.isfinite(r)]


def speedup_interval(
    baseline: Sequence[Sequence],
    other: Sequence[Sequence],
    resamples: int = RESAMPLES,
    floor: Spread | None = None,
) -> Interval:
    """How many times faster ``other`` is than ``baseline``, each given as (seconds, blocks) of its
    rounds, or (seconds, blocks, workers). The ratio of their median times, with a bootstrap
    interval that resamples the blocks the two share, keeping each block's pair together (a
    machine's drift in one block falls on both). Where the rounds came from several worker
    processes, one ratio per process (its blocks paired likewise) and replicate_interval over them,
    no narrower than the run's spread of such ratios, ``floor``, allows."""
    ratios = worker_speedups(baseline, other)
    if ratios:
        return replicate_interval(ratios, floor)
    return _paired_ratio(baseline[:2], other[:2], resamples)


def _paired_blocks(baseline: Sequence[Sequence], other: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """The block medians of the blocks both ran, in pairs."""
    first, second = block_medians(*baseline), block_medians(*other)
    shared = sorted(set(first) & set(second))
    return np.array([first[b] for b in shared]), np.array([second[b] for b in shared])


def _median_ratio(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(a) / np.median(b)) if a.size else float("nan")


def _paired_ratio(
    baseline: Sequence[Sequence], other: Sequence[Sequence], resamples: int = RESAMPLES
) -> Interval:
    a, b = _paired_blocks(baseline, other)
    if a.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    ratio = _median_ratio(a, b)
    if a.size < 2:
        return Interval(ratio, float("nan"), float("nan"))
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return Interval(ratio, ratio, ratio)
    low, high = _bootstrap(
        (a, b),
        lambda x, y, axis: np.median(x, axis=axis) / np.median(y, axis=axis),
        paired=True,
        resamples=resamples,
    )
    return Interval(ratio, low, high)


@dataclass(frozen=True)
class Verdict:
    """The fastest path of a group, or the paths tied for it."""

    winner: str | None  # None: a tie
    tied: tuple[str, ...]  # the paths level with the fastest (the winner alone when there is one)
    margin: Interval  # the fastest path's speed-up over the runner-up
    runner_up: str | None = None  # None: a single path

    def describe(self) -> str:
        """``torch-compile faster, 1.08x [1.04, 1.12] over torch-eager``, or the tie with the same
        figure for its fastest path."""
        if self.runner_up is None:
            return f"{self.tied[0]} alone"
        margin = f"{self.margin.format()} over {self.runner_up}"
        if self.winner is not None:
            return f"{self.winner} faster, {margin}"
        return f"tie ({', '.join(self.tied)}): {self.tied[0]} {margin}"


def decide(
    rounds: dict[str, tuple[Sequence[float], Sequence[int]]],
    threshold: float = NOISE_THRESHOLD,
    floor: Spread | None = None,
) -> Verdict:
    """The tie rule: the path with the lowest median is called faster only when its paired speed-up
    interval over every other path (no narrower than ``floor`` allows) lies wholly above
    1 + ``threshold``. Otherwise it is a tie between it and every path whose interval does not
    clear that bar."""
    if not rounds:
        raise ValueError("decide: no paths")
    order = sorted(rounds, key=lambda path: float(np.median(rounds[path][0])))
    fastest = order[0]
    if len(order) == 1:
        return Verdict(fastest, (fastest,), Interval(float("nan"), float("nan"), float("nan")))
    margins = {path: speedup_interval(rounds[path], rounds[fastest], floor=floor) for path in order[1:]}
    tied = tuple([fastest] + [path for path in order[1:] if not margins[path].above(1 + threshold)])
    return Verdict(fastest if len(tied) == 1 else None, tied, margins[order[1]], order[1])
