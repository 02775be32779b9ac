"""One benchmark case, measured the same way for every framework path, in fresh worker processes.

For a case (a RunConfig), with its compile caches in a folder of their own
under ``--compile-cache`` (keyed by versions, device, code, spec and case):

1. cold: a fresh worker with empty caches times its first call (compilation
   from nothing, plus one call). If an earlier run on the same key measured
   it, that figure is reused and marked so, and the caches it left are kept;
2. cached: a fresh worker that finds the caches the cold one wrote times its
   first call again, as a second run would;
3. that worker's outputs from the initial weights go through the parity gate
   against torch eager fp32 (TF32 off), computed by a torch-eager worker: the
   forward, and for training the first step's gradients and the second
   step's loss, each within twice torch eager's own error in the case's
   precision (bench/gate.py); a path that fails gets no number;
4. the same worker's timed rounds: one call, timed, sets how many
   (``--benchmark-min-rounds``, or more to fill ``--benchmark-max-time``),
   then pytest-benchmark times rounds of exactly one call each, a train step,
   a forward or a whole tiled image, over the worker's connection (whose
   round trip, measured, is recorded as ``messaging_seconds``);
5. peak memory: the worker's own, since it started (bench/runners/*).

Compile seconds are a first call's time less the median call's. Every wait
is bounded by ``--case-timeout``; whatever happens, the case is recorded in
``progress.jsonl`` at once with its status (ok, parity-failed, error,
out-of-memory, crashed, timeout, interrupted), and its workers are ended.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import environment, flops, gate
from bench.runners.config import RunConfig
from bench.workers import Worker, WorkerError
from impls.tiling import tile_positions

ROUND_STATS = ("median", "iqr", "min", "max", "mean", "stddev", "rounds")  # benchmark.json's names


class CaseFailure(Exception):
    """A case that produced no number; ``status`` says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def gate_task(config: RunConfig) -> str:
    """What the parity gate compares: tiles go through the forward, and a data-parallel
    run's training is checked by the equivalence tests, its forward here."""
    return "infer" if config.task == "tiled" or config.devices else config.task


def default_compile_cache() -> Path:
    """The user's cache folder: $XDG_CACHE_HOME/unet-bench/compile, else ~/.cache/unet-bench/compile."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unet-bench" / "compile"


def cache_key(config: RunConfig, device_name: str) -> str:
    """What a compiled artifact depends on: versions, device, the code, the spec and the case.

    The tiled task compiles the forward at the tile's shape: it shares the infer case's folder
    (and its cold figure, when that case ran first).
    """
    case = config.to_dict()
    for label in ("weights_file", "scaling", "image_size"):  # the same graphs whatever these are
        case.pop(label)
    if case["task"] == "tiled":
        case["task"] = "infer"
    text = json.dumps(
        [environment.versions(), device_name, environment.code_hash(), case], sort_keys=True, default=str
    )
    return _digest(text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _save_reference(file: Path, reference: dict[str, Any], own_noise: dict[str, float]) -> None:
    """torch eager's reference outputs (and its own error) for a later run on the same key."""
    arrays = {name: value for name, value in reference.items() if name != "gradients"}
    arrays |= {f"gradients/{name}": value for name, value in reference.get("gradients", {}).items()}
    temporary = file.with_suffix(".partial.npz")
    np.savez(temporary, own_noise=json.dumps(own_noise), **arrays)
    temporary.replace(file)  # a run killed while writing leaves no half file to be read


def _load_reference(file: Path) -> tuple[dict[str, Any], dict[str, float]]:
    with np.load(file) as saved:
        reference: dict[str, Any] = {n: saved[n] for n in saved.files if "/" not in n and n != "own_noise"}
        gradients = {n.split("/", 1)[1]: saved[n] for n in saved.files if n.startswith("gradients/")}
        own_noise = json.loads(str(saved["own_noise"]))
    if gradients:
        reference["gradients"] = gradients
    return reference, own_noise


@dataclass
class Sweep:
    """What the cases of one benchmark run share: options, references, the weights file, records."""

    progress_file: Path | None = None
    compile_cache: Path = field(default_factory=default_compile_cache)
    case_timeout: float = 900.0
    timing: bool = True  # False with --benchmark-disable: each case runs once, untimed, no cold compile
    min_rounds: int = 5
    max_time: float = 1.0
    records: list[dict[str, Any]] = field(default_factory=list)
    _references: dict[str, tuple] = field(default_factory=dict)

    def _reference_folder(self, config: RunConfig) -> Path:
        """Where a spec's canonical weights file and its references are kept between runs: they are
        a function of the versions, the code (impls/, bench/runners/, bench/cells.py) and the spec."""
        key = json.dumps([environment.versions(), environment.code_hash(), config.spec.to_json()])
        return self.compile_cache / "references" / _digest(key)

    def _weights_file(self, config: RunConfig) -> Path:
        return self._reference_folder(config) / "weights.safetensors"

    def _reference(self, config: RunConfig, deadline: float) -> tuple[dict, dict[str, float]]:
        """torch eager fp32 (TF32 off) outputs, and torch eager's own error in the case's precision
        (bench/gate.py): against fp64 for fp32, against fp32 for bf16 or TF32.

        The first reference worker of a spec writes the canonical weights file every worker loads.
        """
        tf32 = config.tf32 and config.device != "cpu"
        low_precision = config.precision == "bf16" or tf32
        task = gate_task(config)
        reference_config = config.replace(
            path="torch-eager", task=task, devices=None, scaling=None, upconv="native", weights_file=None
        )
        key = reference_config.replace(precision=config.precision if low_precision else "fp32").to_json()
        weights = self._weights_file(config)
        saved = weights.parent / f"{_digest(key + environment.device_name(config.device))}.npz"
        if key not in self._references and weights.exists() and saved.exists():
            self._references[key] = _load_reference(saved)
        if key not in self._references:
            weights.parent.mkdir(parents=True, exist_ok=True)
            with Worker(reference_config.replace(precision="fp32", tf32=False), deadline=deadline) as worker:
                if not weights.exists():
                    worker.call("write_initial_weights", str(weights))
                reference = worker.outputs(task)
                if not low_precision:
                    own = gate.noise(reference, worker.call("outputs_in", "fp64", task), low_precision=False)
                elif not tf32:
                    own = gate.noise(worker.call("outputs_in", "bf16", task), reference, low_precision=True)
            if tf32:  # TF32 is process-wide: a worker of its own
                baseline = reference_config.replace(weights_file=str(weights))
                with Worker(baseline, deadline=deadline) as worker:
                    own = gate.noise(worker.outputs(task), reference, low_precision=True)
            self._references[key] = (reference, own)
            _save_reference(saved, reference, own)
        return self._references[key]

    def run(self, config: RunConfig, benchmark) -> dict[str, Any]:
        """Measure one case into ``benchmark``; raise CaseFailure if it produced no number."""
        record: dict[str, Any] = {"case": config.to_dict(), "id": config.id}
        started = time.perf_counter()
        deadline = time.monotonic() + self.case_timeout
        try:
            reference, own_noise = self._reference(config, deadline)
            config = config.replace(weights_file=str(self._weights_file(config)))
            record.update(self._measure(config, benchmark, deadline, reference, own_noise))
            benchmark.extra_info.update(record)
            record["status"] = "ok"
        except CaseFailure as failure:
            record.update(status=failure.status, message=str(failure))
            raise
        except WorkerError as error:
            record.update(status=error.status, message=str(error))
            raise CaseFailure(error.status, str(error)) from error
        except Exception as error:
            record.update(status="error", message=f"{type(error).__name__}: {error}")
            record["traceback"] = traceback.format_exc(limit=8)
            raise CaseFailure("error", record["message"]) from error
        except BaseException:  # Ctrl-C, SIGTERM: recorded, then the run stops as asked
            record.update(status="interrupted", message="the run was stopped during this case")
            raise
        finally:
            record["case_wall_seconds"] = time.perf_counter() - started
            self.record(record)
        return record

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.progress_file is not None:
            with self.progress_file.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")

    def _cold(self, config: RunConfig, entry: Path, deadline: float) -> tuple[dict, RunConfig]:
        """The cold first call, measured in a fresh worker with empty caches, or reused from ``entry``."""
        saved = entry / "cold.json"
        if saved.exists():
            cold = json.loads(saved.read_text())
            return {**cold, "reused": True}, config.replace(upconv=cold["upconv"])
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        with Worker(config, compile_cache=entry, deadline=deadline) as worker:
            cold = {"first_call_seconds": worker.call("first_call"), "upconv": worker.settings["upconv"]}
        # The same graphs from now on: the cached worker must not pick the other form.
        return {**cold, "reused": False}, config.replace(upconv=cold["upconv"])

    def _measure(self, config, benchmark, deadline, reference, own_noise) -> dict[str, Any]:
        device_name = environment.device_name(config.device)
        # Untimed (--benchmark-disable, as in `make test`) nothing is measured: the cases share one
        # folder, as a user's programs share the frameworks' caches, and compile once what they can.
        entry = self.compile_cache / (cache_key(config, device_name) if self.timing else "untimed")
        cold = None
        if self.timing and config.path != "torch-eager":
            cold, config = self._cold(config, entry, deadline)
        else:
            entry.mkdir(parents=True, exist_ok=True)
        with Worker(config, compile_cache=entry, deadline=deadline) as worker:
            first_cached = worker.call("first_call")
            if self.timing and cold is None:  # torch-eager compiles nothing, caches nothing: one worker
                cold = {"first_call_seconds": first_cached, "reused": False, "no_compiler": True}
            outputs = worker.outputs(gate_task(config))
            result = gate.check(outputs, reference, own_noise)
            parity = {"errors": result.errors, "allowed": result.allowed}
            if not result.passed:
                raise CaseFailure(
                    "parity-failed",
                    f"parity gate: {config.path} differs from torch eager fp32: {result.describe()}; "
                    "no number is reported for it",
                )
            messaging = worker.messaging_seconds()
            self.time_rounds(worker, benchmark)
            info = {
                "parity": parity,
                "messaging_seconds": messaging,
                "peak_memory_bytes": worker.peak_memory_bytes(),
                "settings": worker.settings,
            }
        info.update(self._extra_info(config, benchmark, device_name, cold, first_cached))
        if cold is not None and not cold["reused"] and not cold.get("no_compiler"):
            saved = {k: v for k, v in cold.items() if k != "reused"}
            saved["compile_seconds"] = info["compile_seconds_cold"]
            (entry / "cold.json").write_text(json.dumps(saved))
        return info

    def time_rounds(self, worker: Worker, benchmark, min_rounds: int = 0) -> None:
        """Rounds of exactly one call each, timed by pytest-benchmark.

        One timed call first sets how many: ``min_rounds`` (the sweep's if
        larger), or more to fill ``max_time``.
        """
        rounds = 1
        if self.timing:
            start = time.perf_counter()
            worker.call("call")
            fill = math.ceil(self.max_time / (time.perf_counter() - start))
            rounds = max(self.min_rounds, min_rounds, min(1000, fill))
        benchmark.pedantic(worker.call, args=("call",), rounds=rounds, iterations=1)

    def _extra_info(self, config, benchmark, device_name, cold, first_cached) -> dict:
        info: dict[str, Any] = {
            "path": config.path,
            "task": config.task,
            "size": config.size,
            "batch": config.batch,
            "precision": config.precision,
            "device": config.device,
            "device_name": device_name,
            "devices": config.devices,
            "scaling": config.scaling,
            "first_call_seconds_cached": first_cached,
        }
        if config.task == "tiled":
            positions = tile_positions((config.image_size,) * 2, config.spec, config.size)
            tiles = math.ceil(len(positions) / config.batch) * config.batch  # zero tiles fill the last batch
            gflop = tiles * flops.gflop_per_image(config.spec, config.size, "infer")
            info.update(image_size=config.image_size, tiles_per_image=tiles)
        else:
            gflop = flops.gflop_per_image(config.spec, config.size, config.task)
        info["gflop_per_image"] = gflop
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: ran once, untimed
            return info
        # as benchmark.json has them, so that progress.jsonl alone rebuilds the report
        info["stats"] = {name: getattr(stats.stats, name) for name in ROUND_STATS}
        median = stats.stats.median
        images_per_second = (1 if config.task == "tiled" else config.batch) / median
        if config.task == "tiled":
            info["megapixels_per_second"] = config.image_size**2 / 1e6 / median
        tflops = gflop * images_per_second / 1e3
        peak = environment.peak_tflops(
            config.device, config.precision, config.tf32 and config.device != "cpu"
        )
        info.update(
            images_per_second=images_per_second,
            tflops=tflops,
            device_peak_tflops=peak,
            utilization=tflops / peak,
            compile_seconds_cached=max(first_cached - median, 0.0),
        )
        if cold is not None:
            if cold["reused"]:
                info["compile_seconds_cold"] = cold["compile_seconds"]
            else:
                info["compile_seconds_cold"] = max(cold["first_call_seconds"] - median, 0.0)
            info["compile_cold_reused"] = cold["reused"]
        return info
