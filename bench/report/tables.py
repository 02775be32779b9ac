"""The run's tables, one column per path and one row per case of a task: throughput with speed-ups
and outcomes, times with their intervals, compile seconds, memory, break-even calls, TFLOP/s, and
data-parallel scaling."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from bench import stats
from bench.report.cases import BASELINE, CASE, path_order
from bench.report.intervals import verdict_of
from bench.run_config import competes

# What a task's throughput is counted in: images (volumes: cases.counted), or for a tiled whole
# image its pixels, for a whole volume its voxels.
THROUGHPUT = {
    "train": ("img_per_s", "{images} per second"),
    "infer": ("img_per_s", "{images} per second"),
    "tiled": ("megapixels_per_s", "megapixels per second"),
    "window": ("megapixels_per_s", "megavoxels per second"),
}
SUSPECT = 1.0  # of the device's measured peak: more is physically suspect, never explained away


def tasks(measured: pd.DataFrame) -> list[str]:
    """The run's tasks, in THROUGHPUT's order."""
    return [task for task in THROUGHPUT if not measured.empty and task in set(measured.task)]


def _pivot(measured: pd.DataFrame, task: str, value: str) -> pd.DataFrame:
    """One column per path, one row per case of ``task``; empty cells where a path has none."""
    table = measured[measured.task == task].groupby([*CASE, "path"])[value].first().unstack("path")
    return table[path_order(table.columns)]


def _combine(render: Callable, *tables: pd.DataFrame) -> pd.DataFrame:
    """Tables of the same shape as one, ``render`` taking a cell of each; None where the first has none."""
    first = tables[0]
    return pd.DataFrame(
        {
            column: [
                render(*cells) if pd.notna(cells[0]) else None
                for cells in zip(*(table[column] for table in tables), strict=True)
            ]
            for column in first
        },
        index=first.index,
    )


def _interval_cells(measured: pd.DataFrame, task: str, column: str) -> pd.DataFrame:
    """stats.Interval cells from ``column`` and its ``_low`` and ``_high`` bounds."""
    bounds = (_pivot(measured, task, name) for name in (column, f"{column}_low", f"{column}_high"))
    return _combine(stats.Interval, *bounds)


def _mark(table: pd.DataFrame, flags: pd.DataFrame, label: str) -> pd.DataFrame:
    """``label`` after the text of each cell whose flag is set."""
    return _combine(lambda text, flag: f"{text} {label}" if flag else text, table, flags)


def markdown_table(table: pd.DataFrame) -> str:
    """Markdown with the case as plain columns (size, batch, precision), empty where there is no value."""
    table = table.reset_index()
    return table.astype(object).where(table.notna(), "").to_markdown(index=False)


def _rate_and_speedup(rate: float, speedup: stats.Interval | None) -> str:
    if speedup is None or not np.isfinite(speedup.value):
        return f"{rate:.3g}"
    return f"{rate:.3g} ({speedup.format()})"


def _verdict_outcome(case: pd.Series) -> str:
    """What the case's group verdict says of it: "fastest", or its comparison's outcome against the
    fastest path; "" for a path in no verdict (or a group without one)."""
    judgement = verdict_of(case.judgement)
    if judgement is None or not competes(case.path):
        return ""
    if case.path == judgement.best:
        return "fastest"
    return next((c.outcome for c in judgement.comparisons if c.path == case.path), "")


def throughput_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    """Throughput, speed-up against torch-eager and its 95% interval, and what the group's verdict
    says of the path: ``5.79 (1.11x [1.05, 1.16]) fastest``."""
    column = THROUGHPUT[task][0]
    speedups = _interval_cells(measured, task, "speedup")
    table = _combine(_rate_and_speedup, _pivot(measured, task, column), speedups)
    outcomes = measured.assign(outcome=[_verdict_outcome(case) for _, case in measured.iterrows()])
    table = _combine(
        lambda text, outcome: f"{text} {outcome}".rstrip(), table, _pivot(outcomes, task, "outcome")
    )
    return _mark(table, _pivot(measured, task, "tf32_backward"), "TF32-BACKWARD")


def _decimals(value: float, digits: int) -> int:
    """Decimals that show ``digits`` significant digits of ``value`` (times span orders of magnitude)."""
    return max(0, digits - 1 - math.floor(math.log10(abs(value)))) if value else 0


def _time_text(median: stats.Interval, iqr: float) -> str:
    """``191 [188, 195] (34)``: the median to three significant digits, the IQR to two."""
    return f"{median.format(_decimals(median.value, 3), '')} ({iqr:.{_decimals(iqr, 2)}f})"


def time_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    """Milliseconds per call: median [95% interval] (IQR)."""
    return _combine(
        _time_text,
        _interval_cells(measured, task, "median_ms"),
        _pivot(measured, task, "iqr_ms"),
    )


def compile_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    table = _combine(
        "{0:.1f} / {1:.1f}".format,
        _pivot(measured, task, "compile_cold_s"),
        _pivot(measured, task, "compile_cached_s"),
    )
    return _mark(table, _pivot(measured, task, "compile_cold_reused"), "(reused)")


def memory_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    return _pivot(measured, task, "peak_memory_mib").round(0)


def break_even_steps(
    measured: pd.DataFrame, task: str, compile_column: str = "compile_cold_s", speedup: str = "speedup"
) -> pd.DataFrame:
    """Calls after which a path's extra compile time has paid for itself against eager.

    (compile_path - compile_eager) / (eager's seconds per call x (1 - 1 / speed-up)): infinite
    where the path is not faster per call, nan where its speed-up is unknown. ``speedup`` names the
    column: the point, or a bound of its interval ("speedup_low", "speedup_high").
    """
    per_call = _pivot(measured, task, "median_ms") / 1e3
    if BASELINE not in per_call:
        return per_call * math.nan
    ratio = _pivot(measured, task, speedup).to_numpy(float)
    compile_s = _pivot(measured, task, compile_column)
    extra = np.clip(compile_s.to_numpy(float) - compile_s[[BASELINE]].to_numpy(float), 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        saving = per_call[[BASELINE]].to_numpy() * (1 - 1 / ratio)
        # rounded first: 30 s at 0.1 s a call is 300 calls, not 301 from a rounding error
        steps = np.where(ratio > 1, np.ceil(np.round(extra / saving, 6)), np.inf)
    steps = np.where(np.isnan(ratio), np.nan, steps)
    return pd.DataFrame(steps, index=per_call.index, columns=per_call.columns).drop(columns=BASELINE)


def _steps_text(value: float, fewest: float, most: float) -> str:
    """``120 [80, 300]``; "never" where even the speed-up's upper bound saves nothing per call."""
    if np.isinf(fewest):
        return "never"
    text = "never" if np.isinf(value) else f"{value:.0f}"
    if np.isnan(most):  # no interval (older engines)
        return text
    return f"{text} [{fewest:.0f}, {'never' if np.isinf(most) else f'{most:.0f}'}]"


def break_even_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    """Break-even calls, with the range that the speed-up's 95% interval gives."""
    # The fewest calls come with the largest speed-up.
    bounds = (
        break_even_steps(measured, task, speedup=column)
        for column in ("speedup", "speedup_high", "speedup_low")
    )
    return _combine(_steps_text, *bounds)


def utilization_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    def text(tflops: float, utilization: float) -> str:
        share = "peak not measured" if math.isnan(utilization) else f"{utilization:.0%}"
        return f"{tflops:.3g} ({share})"

    table = _combine(text, _pivot(measured, task, "tflops"), _pivot(measured, task, "utilization"))
    return _mark(table, _pivot(measured, task, "utilization") > SUSPECT, "SUSPECT")


def scaling_table(measured: pd.DataFrame) -> pd.DataFrame:
    """Data-parallel cases: img/s, speed-up over one device and efficiency (speed-up / devices)."""
    data = measured[measured.devices.notna()].copy()
    if data.empty:
        return data
    data["per_device_batch"] = (data.batch / data.devices).astype(int)
    base_batch = np.where(data.scaling == "weak", data.per_device_batch, data.batch)
    data["base"] = list(zip(data.path, data.scaling, data["size"], base_batch, data.precision, strict=True))
    one = data[data.devices == 1].set_index("base")["img_per_s"]
    data["speedup"] = data.img_per_s / data.base.map(one)
    data["efficiency"] = data.speedup / data.devices
    columns = ["scaling", "path", "size", "precision", "devices", "batch", "per_device_batch", "img_per_s"]
    return data[[*columns, "speedup", "efficiency"]].sort_values(["scaling", "path", "size", "devices"])
