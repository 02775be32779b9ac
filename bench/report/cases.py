"""A run's cases as table rows: one per measured case (read as a records.Case), per case without a
number, per other benchmark; the columns the tables are made from, and the order of paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from bench import records
from bench.run_config import PLAIN_PATHS, RUNTIME_PATHS

BASELINE = "torch-eager"
CASE = ["size", "batch", "precision"]
# The cases whose rounds the engine interleaved: every path at one task, case and placement.
GROUP = ["task", *CASE, "devices", "scaling"]
SPEEDUP = ["speedup", "speedup_low", "speedup_high"]
FAILURE_COLUMNS = ("path", "task", "size", "batch", "precision", "device", "devices", "scaling")
# What the intervals are made from, and the U-Net's dimensionality (for labels): no CSV
INTERNAL = ["round_seconds", "time_spread", "judgement", "dims"]


def path_order(paths) -> list[str]:
    """torch-eager, torch-plain, the torch-compile paths, jax, jax-plain, then the runtimes."""
    return sorted(
        paths,
        key=lambda p: (
            p in RUNTIME_PATHS,
            p.startswith("jax"),
            p not in (BASELINE, "jax"),
            p not in PLAIN_PATHS,
            p,
        ),
    )


def is_case(benchmark: dict) -> bool:
    return records.is_case(benchmark["extra_info"])


def other_row(benchmark: dict) -> dict | None:
    """A benchmark that is not a U-Net case (the timer check, the weight map); None for a case."""
    if is_case(benchmark):
        return None
    return {
        "benchmark": benchmark["name"],
        "median_ms": benchmark["stats"]["median"] * 1e3,
        "iqr_ms": benchmark["stats"]["iqr"] * 1e3,
        "rounds": benchmark["stats"]["rounds"],
        "details": json.dumps(benchmark["extra_info"]),
    }


def case_row(benchmark: dict) -> dict:
    """A measured case's row; its intervals are filled in once the run's spread is known
    (intervals.with_intervals)."""
    case = records.Case.read(benchmark)
    timing, rounds, sampling = case.timing, case.rounds, case.sampling
    return {
        **{k: getattr(case, k) for k in ("path", "task", *CASE, "device_name", "gflop_per_image")},
        "img_per_s": case.images_per_second,
        "megapixels_per_s": math.nan if case.megapixels_per_second is None else case.megapixels_per_second,
        "median_ms": timing.median * 1e3,
        "median_ms_low": math.nan,
        "median_ms_high": math.nan,
        "iqr_ms": timing.iqr * 1e3,
        "min_ms": timing.min * 1e3,
        "max_ms": timing.max * 1e3,
        "rounds": timing.rounds,
        "schedule": case.schedule,
        "tflops": case.tflops,
        "utilization": math.nan if case.utilization is None else case.utilization,  # peak unmeasured
        "peak_memory_mib": (case.peak_memory_bytes or math.nan) / 2**20,
        "compile_cold_s": case.compile_seconds_cold,
        "compile_cold_reused": bool(case.compile_cold_reused),
        "own_workers": records.SHARED_COMPILE_CACHE not in case.quirks,
        "compile_cached_s": case.compile_seconds_cached,
        "devices": case.devices or math.nan,
        "scaling": case.scaling,
        "tf32_backward": records.TF32_BACKWARD in case.quirks,
        "memory_method": case.settings.get("memory", "?"),
        "workers": sampling.workers if sampling else (len(set(rounds.workers)) if rounds else math.nan),
        "seconds_per_worker": sampling.seconds_per_worker if sampling else math.nan,
        "sampling_s": sampling.seconds if sampling else math.nan,
        "group_budget_s": sampling.group_budget if sampling else math.nan,
        "calibration_extra_ms": _extra_ms(case),
        "round_seconds": (rounds.seconds, rounds.blocks, rounds.workers) if rounds else None,
        "dims": case.dims,
    }


def _extra_ms(case: records.Case) -> float:
    """A calibration path's extra work per call, the median of its last worker's calls (ms)."""
    extra = case.settings.get("calibration", {}).get("extra_seconds")
    return float(np.median(extra)) * 1e3 if extra else math.nan


def failure_row(failure: dict) -> dict:
    upgraded = records.upgrade(failure)
    return {
        **{k: failure["case"].get(k) for k in FAILURE_COLUMNS if k in failure["case"]},
        "status": upgraded["status"],
        "message": failure.get("message", ""),
    }


def counted(measured: pd.DataFrame) -> str:
    """What a run's train and infer calls count: "images", or "volumes" for a 3D U-Net's."""
    return "volumes" if not measured.empty and (measured.dims == 3).any() else "images"


def single_device(measured: pd.DataFrame) -> pd.DataFrame:
    """The cases of one device; data-parallel ones have tables of their own (tables.scaling_table)."""
    return measured[measured.devices.isna()] if not measured.empty else measured
