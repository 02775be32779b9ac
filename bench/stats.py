"""Confidence intervals from timed rounds, and the rule that turns them into a verdict.

No framework here: numpy and scipy only. The bootstrap is scipy's; it is seeded,
so that one run's figures are the same however often its report is rebuilt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
# The practical margin: within it two paths count as equivalent. Chosen before any run was looked at
# (5%: less than users weigh against a framework switch), never fitted to runs; --margin changes it.
MARGIN = 0.05
OUTCOMES = ("faster", "slower", "equivalent", "inconclusive")
# The run-to-run spread of a log speed-up beyond what a run's own workers show (sd, on logs): added to
# every speed-up's variance, since one run cannot see it. Estimated by `python -m bench.calibration
# --run-spread results/calibration-spread/*/` from calibration groups made in two separate pytest
# sessions (train and infer at 128 px, six workers per path each), none of them cited as the rule's
# evidence (docs/verdicts.md): in all 8 pairs of groups the variance between the sessions was within
# what the groups' own workers gave (pooled excess below 0), so 0. Every run records the value it used.
RUN_SPREAD = 0.0
# Below this many workers a comparison's own spread is too unsure to stand alone (one case in ten of
# three workers comes out below a third of the true spread): the group's pooled spread is its floor.
# From this many on its own t interval stands: pooling would widen a quiet comparison by a noisy one
# (an A/A pair's workers differ by about 5% here, the calibration paths' extra work by 10-14% more).
FLOOR_WORKERS = 5


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


def replicate_interval(
    values: Sequence[float], floor: Spread | None = None, run_spread: float = 0.0
) -> Interval:
    """The geometric mean of one estimate per worker process, with a 95% t interval on its log;
    with ``floor``, the wider of that and the interval the pooled spread gives; with ``run_spread``
    (an sd on logs), that much run-to-run variance added to the mean's.

    A worker process has its own luck (memory placement, threads, caches) that all of its rounds
    share: seen here, one path 2-7% slower in the next run's processes, three times what the
    rounds' own interval allowed. Fresh workers are the units that sample it; there are few of
    them, hence Student's t rather than a bootstrap, which is too narrow on a handful of values.
    Three workers estimate their own spread badly (one case in ten comes out below a third of the
    true one), so a spread pooled over several comparisons is a floor: each interval is valid
    whether they share a spread or each has its own. What moves a whole run (the machine that
    day, the session's processes) no run's workers can show: ``run_spread``, measured across runs.
    """
    logs = np.log(np.asarray(values, dtype=float))
    centre = float(np.exp(logs.mean()))
    if logs.size < 2:
        return Interval(centre, float("nan"), float("nan"))
    half = _half_width(float(np.std(logs, ddof=1)), logs.size - 1, logs.size, run_spread)
    if floor is not None:
        half = max(half, _half_width(floor.sd, floor.df, logs.size, run_spread))
    return Interval(centre, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)))


def _half_width(sd: float, df: int, workers: int, run_spread: float) -> float:
    return float(stats.t.ppf((1 + CONFIDENCE) / 2, df) * np.sqrt(sd**2 / workers + run_spread**2))


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


def worker_figures(seconds: Sequence[float], workers: Sequence[int]) -> list[float]:
    """Each worker process's figure: its fastest round.

    Why the fastest, not the median: on these shared 2-core machines rounds run 20-50% slow now and
    then, in runs of several (the first blocks after fresh workers start, a worker's slow stretch),
    on any path, never faster. In a calibration group (train 128 px, six workers of five blocks per
    path: `python -m bench.calibration --worker-figures results/calibration-spread/*/`) an A/A pair's
    workers' log ratios had an sd of 0.074 by their medians and 0.036 by their fastest rounds; 5%, 10%
    and 20% more work came out 0.916x, 0.878x and 0.817x by medians, 0.952x, 0.897x and 0.815x by
    fastest rounds. A path whose own cost comes now
    and then (a collector, a cache flush) would hide it here: the time table keeps every round's
    IQR beside it."""
    split = _by_worker((seconds, [0] * len(seconds), workers))
    return [float(np.min(values)) for values, _ in split.values()]


def median_interval(
    seconds: Sequence[float],
    resamples: int = RESAMPLES,
    workers: Sequence[int] | None = None,
    floor: Spread | None = None,
) -> Interval:
    """The median of the rounds with a bootstrap 95% interval over the rounds; where the rounds
    came from several worker processes (``workers``), the geometric mean of the processes' figures
    (worker_figures) with a t interval over them instead, no narrower than the run's spread ``floor``
    allows: the time of ``estimate``."""
    if workers is not None and len(set(workers)) > 1:
        return replicate_interval(worker_figures(seconds, workers), floor)
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
    # the point estimate alone (a bootstrap per worker would be thrown away), from the blocks both ran
    ratios = [_best_ratio(*_paired_blocks(first_split[w], second_split[w])) for w in shared]
    return [r for r in ratios if np.isfinite(r)]


def speedup_interval(
    baseline: Sequence[Sequence],
    other: Sequence[Sequence],
    resamples: int = RESAMPLES,
    floor: Spread | None = None,
    run_spread: float = 0.0,
) -> Interval:
    """How many times faster ``other`` is than ``baseline``, each given as (seconds, blocks) of its
    rounds, or (seconds, blocks, workers). The ratio of their median times, with a bootstrap
    interval that resamples the blocks the two share, keeping each block's pair together (a
    machine's drift in one block falls on both). Where the rounds came from several worker
    processes, one ratio per process (its blocks paired likewise) and replicate_interval over them,
    no narrower than the pooled spread of such ratios, ``floor``, allows, with ``run_spread``."""
    ratios = worker_speedups(baseline, other)
    if ratios:
        return replicate_interval(ratios, floor, run_spread)
    return _paired_ratio(baseline[:2], other[:2], resamples)


def group_speedup(
    baseline: Sequence[Sequence], other: Sequence[Sequence], floor: Spread | None, run_spread: float
) -> Interval:
    """speedup_interval as a group's comparisons take it: the group's pooled ``floor`` only where the
    two share fewer than FLOOR_WORKERS workers, and the run-to-run spread."""
    few = len(worker_speedups(baseline, other)) < FLOOR_WORKERS
    return speedup_interval(baseline, other, floor=floor if few else None, run_spread=run_spread)


def _paired_blocks(baseline: Sequence[Sequence], other: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """The block medians of the blocks both ran, in pairs."""
    first, second = block_medians(*baseline), block_medians(*other)
    shared = sorted(set(first) & set(second))
    return np.array([first[b] for b in shared]), np.array([second[b] for b in shared])


def _median_ratio(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(a) / np.median(b)) if a.size else float("nan")


def _best_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """One worker's speed-up: the ratio of the two paths' fastest rounds (worker_figures)."""
    return float(np.min(a) / np.min(b)) if a.size else float("nan")


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


def estimate(rounds: Sequence[Sequence]) -> float:
    """A path's time per call: the geometric mean of its worker processes' figures (worker_figures:
    each one's fastest round); with one worker, its median round. The one estimate that rates,
    orders and speed-ups all come from: where two paths ran the same blocks, the speed-up's point
    (the mean of the workers' log ratios, or with one worker the ratio of the medians) is exactly
    the ratio of their estimates."""
    split = _by_worker(rounds)
    if len(split) == 1:
        return float(np.median(next(iter(split.values()))[0]))
    return float(np.exp(np.mean(np.log([np.min(values) for values, _ in split.values()]))))


def outcome(speedup: Interval, margin: float = MARGIN) -> str:
    """One of OUTCOMES for a path's speed-up interval over another: faster (wholly above 1 + margin),
    slower (wholly below 1 / (1 + margin)), equivalent (wholly inside those), else inconclusive."""
    if not speedup.known:
        return "inconclusive"
    if speedup.low > 1 + margin:
        return "faster"
    if speedup.high < 1 / (1 + margin):
        return "slower"
    if speedup.low >= 1 / (1 + margin) and speedup.high <= 1 + margin:
        return "equivalent"
    return "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """A path against another: its speed-up over it (95% interval), the outcome at the margin, and
    what more sampling would take: the workers it was measured in and the spread per worker used."""

    path: str
    against: str
    speedup: Interval
    outcome: str
    workers: int
    sd: float  # per worker, on logs: the wider of the comparison's own and the group's pooled one

    @property
    def decided(self) -> bool:
        return self.outcome != "inconclusive"

    def describe(self) -> str:
        return f"{self.path} {self.speedup.format()} {self.outcome}"

    def workers_to_decide(self, margin: float, run_spread: float, limit: int = 64) -> int | None:
        """How many workers in all would decide it, if its estimate and spread held; None where no
        number up to ``limit`` would (an estimate on the margin, or run-to-run spread alone too wide)."""
        if self.decided:
            return self.workers
        if not np.isfinite(self.sd) or not self.speedup.value > 0:
            return None
        y, bound = math.log(self.speedup.value), math.log1p(margin)
        for n in range(max(self.workers, 1) + 1, limit + 1):
            half = _half_width(self.sd, n - 1, n, run_spread)
            if y - half > bound or y + half < -bound or abs(y) + half <= bound:
                return n
        return None


@dataclass(frozen=True)
class Judgement:
    """A group's answer: its fastest path by the one estimate, every other competing path against it;
    in no verdict, each calibration path against its reference (the rule's own check) and each
    project path against its plain reference (what the project's code costs)."""

    best: str
    comparisons: tuple[Comparison, ...]
    calibration: tuple[Comparison, ...]
    plain: tuple[Comparison, ...]
    margin: float
    run_spread: float
    floor: Spread | None  # for comparisons of fewer than FLOOR_WORKERS workers

    @property
    def decided(self) -> bool:
        """Every comparison, calibration and plain references included, is faster, slower or
        equivalent."""
        return all(c.decided for c in (*self.comparisons, *self.calibration, *self.plain))

    @property
    def verdict(self) -> str:
        """ "winner", "equivalent" (the best and one or more within the margin, any others slower),
        "inconclusive", or "alone" (a single competing path)."""
        if not self.comparisons:
            return "alone"
        outcomes = {c.outcome for c in self.comparisons}
        if "inconclusive" in outcomes:
            return "inconclusive"
        return "equivalent" if "equivalent" in outcomes else "winner"

    def equivalent_paths(self) -> list[str]:
        return [self.best] + [c.path for c in self.comparisons if c.outcome == "equivalent"]

    def describe(self) -> str:
        """The verdict line: who to pick, then every comparison against the best."""
        others = "; ".join(c.describe() for c in self.comparisons)
        margin = f"{self.margin:.0%}"
        if self.verdict == "alone":
            return f"{self.best} alone"
        if self.verdict == "winner":
            head = f"{self.best} faster than every other path by more than {margin}"
        elif self.verdict == "equivalent":
            names = ", ".join(self.equivalent_paths())
            head = f"equivalent within {margin}: {names}; pick by compile time, memory or deployment"
        else:
            head = f"inconclusive at {margin}: {self.best} leads"
        return f"{head} ({others})"

    def minutes_to_decide(self, seconds_per_worker: float) -> float | None:
        """Extra minutes of sampling that would decide every open comparison, at the group's measured
        cost per worker (a fresh worker per path and its rounds); None where more sampling would not."""
        needed = [c.workers_to_decide(self.margin, self.run_spread) for c in self.comparisons]
        if None in needed:
            return None
        # a decided comparison needs the workers it has: no more
        extra = max((n - c.workers for n, c in zip(needed, self.comparisons, strict=True)), default=0)
        return extra * seconds_per_worker / 60


def judge(
    rounds: Mapping[str, Sequence[Sequence]],
    competing: Sequence[str],
    calibration: Mapping[str, str] | None = None,
    margin: float = MARGIN,
    run_spread: float = RUN_SPREAD,
    plain: Mapping[str, str] | None = None,
) -> Judgement:
    """The group's Judgement from each path's rounds: (seconds, blocks, workers). ``competing``: the
    paths in the verdict; ``calibration``: {calibration path: the path it is measured against};
    ``plain``: {project path: the plain reference it is measured against}.
    A comparison of fewer than FLOOR_WORKERS workers has the spread per worker pooled over the group's
    verdict and calibration comparisons as its floor (the plain references' leave the rule as it was)."""
    if not competing:
        raise ValueError("judge: no competing paths")
    best = min(competing, key=lambda path: estimate(rounds[path]))
    checks = {"calibration": list((calibration or {}).items()), "plain": list((plain or {}).items())}
    ruled = [(path, best) for path in competing if path != best] + checks["calibration"]
    ratios = {pair: worker_speedups(rounds[pair[1]], rounds[pair[0]]) for pair in ruled + checks["plain"]}
    floor = pooled_spread([ratios[pair] for pair in ruled if len(ratios[pair]) > 1])

    def compared(path: str, against: str) -> Comparison:
        found = ratios[(path, against)]
        interval = group_speedup(rounds[against], rounds[path], floor, run_spread)
        own = float(np.std(np.log(found), ddof=1)) if len(found) > 1 else math.nan
        floored = floor is not None and len(found) < FLOOR_WORKERS and np.isfinite(own)
        sd = max(own, floor.sd) if floored else own
        return Comparison(path, against, interval, outcome(interval, margin), len(found), sd)

    comparisons = tuple(compared(path, best) for path in competing if path != best)
    calibration_made, plain_made = (tuple(compared(*pair) for pair in checks[k]) for k in checks)
    return Judgement(best, comparisons, calibration_made, plain_made, margin, run_spread, floor)
