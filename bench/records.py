"""A case's record as a run's JSON holds it (a line of progress.jsonl, a benchmark's ``extra_info`` in
benchmark.json, a failure of its ``unet_bench`` section), typed, and the upgrade that reads the records
of older engines in today's shape.

A record carries its format's version under ``SCHEMA_KEY``; records without one are version 1, written
by every engine before the key. Version 1 spans four engines, told apart by what they wrote:

- the first engine ran every case in one process with one compile cache, kept no rounds and named no
  failure's status (an unnamed failure was a case cut short);
- the next ran each case in workers of its own (``compile_cold_reused``), still without rounds;
- then rounds interleaved in blocks (``rounds_seconds``, ``round_blocks``), in one worker per path;
- then several workers per path (``round_workers``) and the sampling that chose how many.

``upgrade`` is the one place these rules live: the report reads every record through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_KEY = "schema"
SCHEMA = 2  # today's records: the sweep writes it into each (Sweep.record)
FIRST_SCHEMA = 1  # a record without SCHEMA_KEY

# A case's status: measured, failed, or not measured (and why).
OK = "ok"
FAILED = ("parity-failed", "error", "out-of-memory", "crashed", "timeout")
NOT_MEASURED = ("skipped", "interrupted")  # a resumed run (--resume) measures these
BY_DESIGN = ("not-applicable", "not-installed")  # its path cannot run it, or lacks a package: no worker
STATUSES = (OK, *FAILED, *NOT_MEASURED, *BY_DESIGN)

# What an older engine did that today's does not (Case.quirks).
SHARED_COMPILE_CACHE = "shared-compile-cache"  # one cache for every case: a cold figure may be partly warm
TF32_BACKWARD = "tf32-backward"  # torch fp32 training whose backward cuDNN let use TF32


@dataclass(frozen=True)
class Rounds:
    """Every timed round of a case: its seconds, the block it ran in and the worker that ran it."""

    seconds: tuple[float, ...]
    blocks: tuple[int, ...]
    workers: tuple[int, ...]


@dataclass(frozen=True)
class Timing:
    """pytest-benchmark's figures of the case's rounds, in seconds."""

    median: float
    iqr: float
    min: float
    max: float
    rounds: int


@dataclass(frozen=True)
class Sampling:
    """How many workers the engine gave a path of the case's group, and the seconds they took."""

    workers: int
    seconds: float
    seconds_per_worker: float
    group_budget: float


@dataclass(frozen=True)
class Case:
    """A measured U-Net case, in today's shape."""

    path: str
    task: str
    size: int
    dims: int  # of the U-Net: 2, or 3 for volumes
    batch: int
    precision: str
    device_name: str
    devices: int | None  # data-parallel cases only
    scaling: str | None
    gflop_per_image: float
    images_per_second: float
    megapixels_per_second: float | None  # tiled and window (megavoxels) cases only
    tflops: float
    utilization: float | None  # None where the device's peak is not measured
    peak_memory_bytes: int | None
    compile_seconds_cold: float
    compile_seconds_cached: float
    compile_cold_reused: bool
    schedule: str
    settings: Mapping[str, Any]
    sampling: Sampling | None  # None: the engine chose no number of workers (sampling came later)
    rounds: Rounds | None  # None: the engine kept no rounds
    timing: Timing
    quirks: frozenset[str]

    @classmethod
    def read(cls, benchmark: Mapping[str, Any]) -> Case:
        """A benchmark of benchmark.json (``extra_info`` and ``stats``) of any version."""
        info, stats = upgrade(benchmark["extra_info"]), benchmark["stats"]
        sampling = info.get("sampling")  # written where the engine chose how many workers
        return cls(
            **{name: info[name] for name in _COPIED},
            dims=info.get("dims", 2),  # written since volumes were measured
            megapixels_per_second=info.get("megapixels_per_second"),  # tiled and window cases only
            compile_cold_reused=info.get("compile_cold_reused", False),  # where a cold compile was timed
            devices=info["devices"] or None,
            sampling=Sampling(*(sampling[k] for k in Sampling.__dataclass_fields__)) if sampling else None,
            rounds=_rounds(info),
            timing=Timing(*(stats[k] for k in Timing.__dataclass_fields__)),
            quirks=frozenset(info["quirks"]),
        )


def _rounds(info: Mapping[str, Any]) -> Rounds | None:
    """None where the engine kept no rounds, or the case ran untimed (--benchmark-disable)."""
    if not info.get("rounds_seconds"):
        return None
    return Rounds(tuple(info["rounds_seconds"]), tuple(info["round_blocks"]), tuple(info["round_workers"]))


_COPIED = (
    *("path", "task", "size", "batch", "precision", "device_name", "scaling", "gflop_per_image"),
    *("images_per_second", "tflops", "utilization", "peak_memory_bytes", "compile_seconds_cold"),
    *("compile_seconds_cached", "schedule", "settings"),
)


def is_case(info: Mapping[str, Any]) -> bool:
    """A U-Net case's record; other benchmarks (the timer check, the weight map) have no images per second."""
    return "images_per_second" in info


def upgrade(record: Mapping[str, Any]) -> dict[str, Any]:
    """A case's record in today's shape, whatever its version, with ``quirks`` (what its engine did
    that today's does not) added for the reader. A ValueError for a version newer than this reader."""
    version = record.get(SCHEMA_KEY, FIRST_SCHEMA)
    if version > SCHEMA:
        raise ValueError(f"a record of schema {version}, newer than this reader's {SCHEMA}")
    if version == FIRST_SCHEMA:
        record = _from_first_schema(record)
    return {**record, SCHEMA_KEY: SCHEMA, "quirks": record.get("quirks", [])}


def _from_first_schema(record: Mapping[str, Any]) -> dict[str, Any]:
    if not is_case(record):
        # a failure without a status: a case cut short, by the first engine, which did not name it so
        return {"status": "interrupted", **record}
    quirks = []
    if "compile_cold_reused" not in record:
        quirks.append(SHARED_COMPILE_CACHE)
    if _tf32_backward(record):
        quirks.append(TF32_BACKWARD)
    seconds = record.get("rounds_seconds") or []
    return {
        "status": OK,  # a measured case's extra_info named none
        "schedule": "",
        "devices": None,
        "scaling": None,
        **record,
        "rounds_seconds": seconds,
        "round_blocks": record["round_blocks"] if seconds else [],
        "round_workers": record.get("round_workers") or [0] * len(seconds),  # one worker where none named
        "quirks": quirks,
    }


def _tf32_backward(info: Mapping[str, Any]) -> bool:
    """A torch fp32 case on CUDA (the first engine named no device: it ran on CUDA only) measured before
    precision was set for the whole process: the engine turned TF32 off around the forward only, and
    cuDNN's default let the backward use it."""
    settings = info.get("settings", {})
    return (
        settings.get("framework") == "torch"
        and info["task"] == "train"
        and info["precision"] == "fp32"
        and info.get("device", "cuda") != "cpu"
        and "fp32_precision" not in settings
        and not settings.get("tf32")
    )
