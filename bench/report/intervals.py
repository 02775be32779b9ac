"""Each case's time and speed-up over torch-eager with their 95% intervals, and each group's
stats.Judgement, from the rounds the engine kept (bench/stats.py); values without intervals for the
runs of older engines, which kept none."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench import stats
from bench.report.cases import BASELINE, GROUP, SPEEDUP, path_order
from bench.run_config import WHOLE_INPUT_TASKS, verdict_roles

NAN = stats.Interval(math.nan, math.nan, math.nan)


def rule_of(section: dict) -> tuple[float, float]:
    """The margin and the run-to-run spread a run recorded; today's for runs that recorded none."""
    options = section.get("options", {})
    return options.get("margin", stats.MARGIN), options.get("run_spread", stats.RUN_SPREAD)


def _group_keys(measured: pd.DataFrame) -> list[str]:
    """A key per case that its group's cases share (as text: a missing devices or scaling is nan or None)."""
    return [str(tuple(case)) for case in measured[GROUP].itertuples(index=False)]


def _speedup(case: pd.Series, baseline: pd.Series | None, run_spread: float) -> stats.Interval:
    """The case against torch-eager of its group: paired blocks where both kept their rounds (as its
    verdict's comparisons are: stats.group_speedup),
    otherwise (older engines) the ratio of the medians alone."""
    if baseline is None:
        return NAN
    if case.path == BASELINE:
        return stats.Interval(1.0, math.nan, math.nan)
    if case.round_seconds is None or baseline.round_seconds is None:
        return stats.Interval(baseline.median_ms / case.median_ms, math.nan, math.nan)
    floor = case.judgement.floor if case.judgement is not None else None
    return stats.group_speedup(baseline.round_seconds, case.round_seconds, floor, run_spread)


def _median(case: pd.Series) -> stats.Interval:
    if case.round_seconds is None:
        return NAN
    seconds, _, workers = case.round_seconds
    return stats.median_interval(seconds, workers=workers, floor=case.time_spread)


def _time_spreads(cases: list[pd.Series]) -> list:
    """Each case's floor for its time's interval: the worker-to-worker spread of its device's times,
    pooled over the run's cases (stats.replicate_interval)."""
    times: dict[str, list] = {}
    for case in cases:
        if case.round_seconds is not None:
            seconds, _, workers = case.round_seconds
            times.setdefault(case.device_name, []).append(stats.worker_figures(seconds, workers))
    floor = {device: stats.pooled_spread(values) for device, values in times.items()}
    return [floor.get(c.device_name) for c in cases]


def judge_group(group: pd.DataFrame, margin: float, run_spread: float) -> stats.Judgement | None:
    """A group's stats.Judgement: the paths that compete (not the plain references, the calibration
    paths or TF32-backward rows) against the fastest, each calibration path against torch-eager, each
    mirrored path against its plain reference; None without rounds or with nothing to compare."""
    usable = group[group.round_seconds.notna() & ~group.tf32_backward]
    rounds = dict(zip(usable.path, usable.round_seconds, strict=True))
    competing, calibration, plain = verdict_roles(path_order(rounds))
    if not competing or len(competing) + len(calibration) + len(plain) < 2:
        return None
    return stats.judge(rounds, competing, calibration, margin, run_spread, plain)


def verdict_of(judgement: stats.Judgement | None) -> stats.Judgement | None:
    """The judgement as the verdict takes it: None for a group whose one competing path was compared
    only with its plain reference (no verdict, as before plain references were compared)."""
    if judgement is None or not (judgement.comparisons or judgement.calibration):
        return None
    return judgement


def with_intervals(measured: pd.DataFrame, margin: float, run_spread: float) -> pd.DataFrame:
    """Each case's time (the one estimate) and speed-up over torch-eager, with their 95% intervals,
    its rates from that time, and its group's Judgement."""
    keys, cases = _group_keys(measured), [case for _, case in measured.iterrows()]
    measured["time_spread"] = _time_spreads(cases)
    cases = [case for _, case in measured.iterrows()]
    medians = [_median(case) for case in cases]
    estimated = [
        m.value * 1e3 if np.isfinite(m.value) else old
        for m, old in zip(medians, measured.median_ms, strict=True)
    ]
    # every rate from the one estimate: rescaled from the time it was computed from (a call is a
    # batch, or a whole image for "tiled" and volume for "window")
    per_call = np.where(measured.task.isin(list(WHOLE_INPUT_TASKS)), 1, measured.batch)
    rated_ms = per_call / measured.img_per_s.to_numpy(float) * 1e3
    scale = rated_ms / np.asarray(estimated, dtype=float)
    for column in ("img_per_s", "megapixels_per_s", "tflops", "utilization"):
        measured[column] = measured[column] * scale
    measured["median_ms"] = estimated
    measured["median_ms_low"] = [m.low * 1e3 for m in medians]
    measured["median_ms_high"] = [m.high * 1e3 for m in medians]
    judgements = {
        key: judge_group(measured[[k == key for k in keys]], margin, run_spread) for key in set(keys)
    }
    measured["judgement"] = [judgements[key] for key in keys]
    cases = [case for _, case in measured.iterrows()]
    by_key = {key: case for key, case in zip(keys, cases, strict=True) if case.path == BASELINE}
    intervals = [_speedup(case, by_key.get(key), run_spread) for key, case in zip(keys, cases, strict=True)]
    for column, field in zip(SPEEDUP, ("value", "low", "high"), strict=True):
        measured[column] = [getattr(interval, field) for interval in intervals]
    return measured
