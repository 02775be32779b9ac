"""One benchmark case, measured the same way for every framework path.

For a case (path, task, size, batch, precision, device) a fresh runner is
built, then:

1. its first call is timed: compilation from cold in-memory and on-disk caches
   (the session starts with empty ones), plus one call;
2. its in-memory compiled code is dropped and the first call timed again:
   compilation from the on-disk caches the first one wrote, as a second run
   would find them;
3. the parity gate compares its outputs from the initial weights with torch
   eager fp32 (TF32 off); a path that fails it gets no number;
4. one more call, timed, sets the number of rounds (pytest-benchmark's
   ``--benchmark-min-rounds``, or more to fill ``--benchmark-max-time``);
   peak memory is reset and pytest-benchmark times rounds of exactly one
   ``infer()`` or ``train_step()`` each (``benchmark.pedantic``, no
   calibration calls: the function is far slower than the timer's resolution).

Compile seconds are the first call's time less the median call's. Everything
a case measured, or why it failed, is appended to ``progress.jsonl`` at once,
so an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import cells, environment, flops, gate
from bench.runners import make_runner
from impls.spec import UNetSpec
from impls.tiling import predict_tiled, tile_positions

# "tiled": one whole image predicted in tiles (impls/tiling.py) through the
# runner's predict; the case's size is the tile side, its batch the tiles per call.
TASKS = ("train", "infer", "tiled")


@dataclass(frozen=True)
class Case:
    path: str
    task: str
    size: int
    batch: int  # global batch when data-parallel
    precision: str
    device: str
    devices: int | None = None  # data-parallel over this many devices (bench/runners/distributed.py)
    scaling: str | None = None  # "weak" (batch per device fixed) or "strong" (global batch fixed)

    @property
    def id(self) -> str:
        parallel = f"-{self.scaling}-{self.devices}dev" if self.devices else ""
        return f"{self.task}-{self.path}-{self.size}px-b{self.batch}-{self.precision}{parallel}"

    @property
    def group(self) -> str:
        parallel = f" {self.scaling} scaling" if self.devices else ""
        return f"{self.task} {self.size}px b{self.batch} {self.precision} {self.device}{parallel}"


class CaseFailure(Exception):
    """A case that produced no number; ``status`` says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_of(error: BaseException) -> str:
    text = f"{type(error).__name__} {error}".lower()
    if (
        "out of memory" in text
        or "outofmemory" in text
        or "resource_exhausted" in text
        or "memoryerror" in text
    ):
        return "out-of-memory"
    return "error"


def _gate_task(case: Case) -> str:
    """What the parity gate compares: tiles go through the forward, and a data-parallel
    run's training is checked by the equivalence tests, its forward here."""
    return "infer" if case.task == "tiled" or case.devices else case.task


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@dataclass
class Session:
    """What the cases of one pytest session share: spec, options, references, records."""

    spec: UNetSpec
    tf32: bool = False
    upconv: str = "auto"
    progress: Path | None = None
    min_rounds: int = 5
    max_time: float = 1.0
    loss: str = "ce"
    image_size: int = 512  # the whole image of the "tiled" task
    sync_bn: bool = False  # data-parallel cases: BatchNorm statistics over the global batch
    records: list[dict[str, Any]] = field(default_factory=list)
    _references: dict[tuple, tuple] = field(default_factory=dict)
    _warm: set[tuple] = field(default_factory=set)

    def _warm_up_runtime(self, case: Case) -> None:
        """Once per path and precision: a tiny U-Net's forward, so that the framework's
        one-time start (thread pools, compiler start-up) is billed to no case."""
        key = (case.path, case.precision, case.device)
        if key in self._warm:
            return
        runner = make_runner(
            case.path,
            UNetSpec(width=2, depth=1),
            batch=2,
            size=8,
            precision=case.precision,
            device=case.device,
            tf32=self.tf32,
            upconv="native",
        )
        runner.infer()
        self._warm.add(key)

    def _reference(self, case: Case) -> tuple[dict, dict | None]:
        """torch eager fp32 (TF32 off) outputs, and torch eager's in the case's lower precision."""
        low_precision = case.precision == "bf16" or (self.tf32 and case.device != "cpu")
        task = _gate_task(case)
        key = (task, case.size, case.batch, case.device, case.precision if low_precision else "fp32")
        if key not in self._references:

            def outputs(precision: str, tf32: bool) -> dict:
                runner = make_runner(
                    "torch-eager",
                    self.spec,
                    batch=case.batch,
                    size=case.size,
                    precision=precision,
                    device=case.device,
                    tf32=tf32,
                    upconv="native",
                    loss=self.loss,
                )
                return runner.outputs(task)

            reference = outputs("fp32", False)
            baseline = outputs(case.precision, self.tf32) if low_precision else None
            self._references[key] = (reference, baseline)
            gc.collect()
        return self._references[key]

    def run(self, case: Case, benchmark) -> dict[str, Any]:
        """Measure one case into ``benchmark``; raise CaseFailure if it produced no number."""
        record: dict[str, Any] = {"case": asdict(case), "id": case.id}
        started = time.perf_counter()
        runner = None
        try:
            reference, baseline = self._reference(case)
            self._warm_up_runtime(case)
            runner = self.make_runner(case)
            if case.devices:
                record["messaging_seconds"] = runner.messaging_seconds()
            call = self._call(case, runner)
            first_cold = _timed(call)
            runner.reset_compilation()
            first_cached = _timed(call)
            result = gate.check(runner.outputs(_gate_task(case)), reference, baseline)
            record["parity"] = {"errors": result.errors, "allowed": result.allowed}
            if not result.passed:
                raise CaseFailure(
                    "parity-failed",
                    f"parity gate: {case.path} differs from torch eager fp32: {result.describe()}; "
                    "no number is reported for it",
                )
            self.time_rounds(call, benchmark, before=runner.reset_peak_memory)
            record.update(self._extra_info(case, runner, benchmark, first_cold, first_cached))
            benchmark.extra_info.update(record)
            record["status"] = "ok"
        except CaseFailure as failure:
            record.update(status=failure.status, message=str(failure))
            raise
        except Exception as error:
            record.update(status=_status_of(error), message=f"{type(error).__name__}: {error}")
            record["traceback"] = traceback.format_exc(limit=8)
            raise CaseFailure(record["status"], record["message"]) from error
        except BaseException:  # Ctrl-C or a time limit: recorded, then the run stops as asked
            record.update(status="interrupted", message="the run was stopped during this case")
            raise
        finally:
            if case.devices and runner is not None:
                runner.close()  # its worker processes, before the next case starts its own
            record["case_wall_seconds"] = time.perf_counter() - started
            self.records.append(record)
            if self.progress is not None:
                with self.progress.open("a") as f:
                    f.write(json.dumps(record, default=str) + "\n")
            gc.collect()
        return record

    def make_runner(self, case: Case):
        """The case's runner, with the session's options."""
        return make_runner(
            case.path,
            self.spec,
            batch=case.batch,
            size=case.size,
            precision=case.precision,
            device=case.device,
            tf32=self.tf32,
            upconv=self.upconv,
            loss=self.loss,
            devices=case.devices,
            sync_bn=self.sync_bn,
        )

    def _call(self, case: Case, runner):
        """The function a round times: one train step, one forward, or one whole tiled image."""
        if case.task == "train":
            return runner.train_step
        if case.task == "infer":
            return runner.infer
        image = self.whole_image
        return lambda: predict_tiled(runner.predict, image, self.spec, tile=case.size, batch=case.batch)

    @functools.cached_property
    def whole_image(self) -> np.ndarray:
        """The "tiled" task's (C, H, W) image: synthetic cells, ``image_size`` on a side."""
        image = cells.generate(1, self.image_size, seed=0).images[0]
        return np.repeat(image, self.spec.in_channels, axis=0)

    def time_rounds(self, call, benchmark, before=lambda: None, min_rounds: int = 0) -> None:
        """Rounds of exactly one ``call`` each, timed by pytest-benchmark.

        One timed call first sets how many: ``min_rounds`` (the session's if
        larger), or more to fill ``max_time``.
        """
        fill = min(1000, math.ceil(self.max_time / _timed(call)))
        rounds = max(self.min_rounds, min_rounds, fill)
        before()
        benchmark.pedantic(call, rounds=rounds, iterations=1)

    def _extra_info(self, case: Case, runner, benchmark, first_cold: float, first_cached: float) -> dict:
        info: dict[str, Any] = {
            "path": case.path,
            "task": case.task,
            "size": case.size,
            "batch": case.batch,
            "precision": case.precision,
            "device": case.device,
            "device_name": environment.device_name(case.device),
            "devices": case.devices,
            "scaling": case.scaling,
            "first_call_seconds_cold": first_cold,
            "first_call_seconds_cached": first_cached,
            "peak_memory_bytes": runner.peak_memory_bytes(),
            "settings": runner.settings,
            "spec": asdict(self.spec),
        }
        if case.task == "tiled":
            positions = tile_positions(self.whole_image.shape[1:], self.spec, case.size)
            tiles = math.ceil(len(positions) / case.batch) * case.batch  # zero tiles fill the last batch
            gflop = tiles * flops.gflop_per_image(self.spec, case.size, "infer")
            info.update(image_size=self.image_size, tiles_per_image=tiles)
        else:
            gflop = flops.gflop_per_image(self.spec, case.size, case.task)
        info["gflop_per_image"] = gflop
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: ran once, untimed
            return info
        median = stats.stats.median
        images_per_second = (1 if case.task == "tiled" else case.batch) / median
        if case.task == "tiled":
            info["megapixels_per_second"] = self.image_size**2 / 1e6 / median
        tflops = gflop * images_per_second / 1e3
        peak = environment.peak_tflops(case.device, case.precision, self.tf32 and case.device != "cpu")
        info.update(
            images_per_second=images_per_second,
            tflops=tflops,
            device_peak_tflops=peak,
            utilization=tflops / peak,
            compile_seconds_cold=max(first_cold - median, 0.0),
            compile_seconds_cached=max(first_cached - median, 0.0),
        )
        return info
