"""What a case's record says of its rounds: their statistics, rates, utilization against the
device's measured peak, compile seconds, and the case's facts (benchmark.json's extra_info)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import environment, flops, stats
from bench.run_config import WHOLE_INPUT_TASKS, RunConfig
from bench.sweep.case import Prepared
from impls.tiling import tile_positions


def round_stats(seconds: list[float], workers: list[int]) -> dict[str, float]:
    """The rounds' statistics, by benchmark.json's names, and the time per call with its 95% interval
    (stats.estimate: over the worker processes' figures where there were several)."""
    values = np.asarray(seconds, dtype=float)
    q1, q3 = np.percentile(values, [25, 75])
    interval = stats.median_interval(values, workers=workers)
    return {
        "median": float(np.median(values)),
        "iqr": float(q3 - q1),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "stddev": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "rounds": int(values.size),
        "estimate": interval.value,  # the time per call rates and speed-ups use (stats.estimate)
        "estimate_interval": [interval.low, interval.high],
    }


@dataclass
class DevicePeaks:
    """The devices' measured peaks, one probe per (device, precision, TF32) and run, failures too."""

    say: Callable[[str], None]
    _peaks: dict[tuple, float | str] = field(default_factory=dict)

    def peak_tflops(self, config: RunConfig) -> float | str:
        """The device's measured peak in the case's precision (environment.peak_tflops, a process of
        its own), or why it could not be measured: the run goes on without utilization."""
        key = (config.device, config.precision, config.tf32 and config.device != "cpu")
        if key not in self._peaks:
            try:
                self._peaks[key] = environment.peak_tflops(*key)
            except environment.ProbeError as error:
                self._peaks[key] = str(error).splitlines()[0]
                self.say(
                    f"the device's peak could not be measured ({self._peaks[key]}): no utilization figures"
                )
        return self._peaks[key]


def extra_info(p: Prepared, timing: bool, peaks: DevicePeaks) -> dict[str, Any]:
    """The case's facts and, timed, its rates and compile seconds."""
    config = p.config
    device_name = environment.device_name(config.device)
    info: dict[str, Any] = {
        "path": config.path,
        "task": config.task,
        "size": config.size,
        "dims": config.spec.dims,
        "batch": config.batch,
        "precision": config.precision,
        "device": config.device,
        "device_name": device_name,
        "devices": config.devices,
        "scaling": config.scaling,
        "first_call_seconds_cached": p.first_cached,  # a whole-input task's: its compile alone (Service)
    }
    whole = config.task in WHOLE_INPUT_TASKS
    if whole:
        positions = tile_positions((config.image_size,) * config.spec.dims, config.spec, config.size)
        tiles = math.ceil(len(positions) / config.batch) * config.batch  # zero tiles fill the last batch
        gflop = tiles * flops.gflop_per_image(config.spec, config.size, "infer")
        info.update(image_size=config.image_size, tiles_per_image=tiles)
    else:
        gflop = flops.gflop_per_image(config.spec, config.size, config.task)
    info["gflop_per_image"] = gflop
    if not timing:  # --benchmark-disable: ran once, untimed
        return info
    # as benchmark.json has them, so that progress.jsonl alone rebuilds the report
    info["stats"] = round_stats(p.rounds, p.workers)
    median = info["stats"]["estimate"]  # the one estimate (bench/stats.py)
    images_per_second = (1 if whole else config.batch) / median
    one_call = 0.0 if whole else median  # in a first call's seconds; a whole-input task's has none
    if whole:  # of a volume, its voxels: records and tables keep one column for both
        info["megapixels_per_second"] = config.image_size**config.spec.dims / 1e6 / median
    tflops = gflop * images_per_second / 1e3
    peak = peaks.peak_tflops(config)
    info.update(
        images_per_second=images_per_second,
        tflops=tflops,
        device_peak_tflops=None if isinstance(peak, str) else peak,
        utilization=None if isinstance(peak, str) else tflops / peak,
        compile_seconds_cached=max(p.first_cached - one_call, 0.0),
    )
    if isinstance(peak, str):
        info["device_peak_problem"] = peak
    cold = p.cold
    if cold is not None:
        if cold["reused"]:
            info["compile_seconds_cold"] = cold["compile_seconds"]
        else:
            info["compile_seconds_cold"] = max(cold["first_call_seconds"] - one_call, 0.0)
        info["compile_cold_reused"] = cold["reused"]
    return info
