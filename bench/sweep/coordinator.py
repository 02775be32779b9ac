"""The cases of one group, measured side by side in fresh worker processes.

A group is the cases that compete: the same task, shape, precision and device,
one per framework path. For each case of a group, with its compile caches in a
folder of their own under ``--compile-cache`` (keyed by versions, device, code,
spec and case):

1. cold: a fresh worker with empty caches times its first call (compilation
   from nothing, plus one call). If an earlier run on the same key measured
   it, that figure is reused and marked so, and the caches it left are kept.
   A compiled torch path whose memory format is not yet chosen starts one
   cold worker per format, each with empty caches of its own, times a few
   rounds of each in turn and keeps the faster (``COLD_TIMED_FORM``); its
   up-conv form each such worker times on the layer, compiled (``OWN_FORMS``);
2. cached: a fresh worker that finds the caches the cold one wrote times its
   first call again, as a second run would. It stays alive through the group;
3. that worker's outputs from the initial weights go through the parity gate
   against torch eager fp32 (TF32 off), computed by a torch-eager worker: the
   forward, and for training the first step's gradients and the second
   step's loss, each within twice torch eager's own error in the case's
   precision (bench/gate.py); a path that fails gets no number.

Then the rounds: one call each (a train step, a forward or a whole tiled
image), timed inside its worker with the device synchronised, the paths
interleaved in rotated blocks (A B C, B C A, C A B, ...) so that a machine's
drift falls on every path alike. Blocks are added until every case's median
has a 95% bootstrap interval within ``target_ci`` of it, after at least
``min_rounds`` blocks and at most ``max_time`` seconds of rounds per case.
Where the device cannot hold every worker of a group at once, the group is
measured in parts, one after the other, and the records say so. Peak memory
is each worker's own, since it started (bench/runners/*).

Compile seconds are a first call's time less the median round. Every wait is
bounded by ``--case-timeout``; whatever happens, each case is recorded in
``progress.jsonl`` with its status (ok, parity-failed, error, out-of-memory,
crashed, timeout, interrupted, skipped; not-applicable and not-installed for a case its path
cannot run by design or lacks a package for, which starts no worker), and its workers are ended.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench import environment, flops, gate, stats
from bench.runners import forms
from bench.runners.config import (
    COMPILED_TORCH_PATHS,
    FREEZINGS,
    MEMORY_FORMATS,
    PLAIN_PATHS,
    UPCONVS,
    RunConfig,
    calibration_effect,
    compiles_nothing,
    memory_kind,
    unavailable,
    verdict_roles,
)
from bench.workers import Worker, WorkerError
from impls import convert, footprint
from impls.files import atomic_output, discard, seal, seal_problem, write_text
from impls.tiling import tile_positions

T = TypeVar("T")


class CaseFailure(Exception):
    """A case that produced no number; ``status`` says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def default_compile_cache() -> Path:
    """The user's cache folder: $XDG_CACHE_HOME/unet-bench/compile, else ~/.cache/unet-bench/compile."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unet-bench" / "compile"


def needed_bytes(config: RunConfig) -> int:
    """An upper estimate of the memory a case's workers take together (impls/footprint.py): the
    processes of a torch data-parallel case share a CPU's memory, and each has a GPU of its own."""
    torchrun = config.devices is not None and config.framework == "torch"
    per_device = torchrun or config.device != "cpu"
    batch = config.batch // (config.devices or 1) if per_device else config.batch
    kind = memory_kind(config.path)
    one = footprint.estimate_bytes(
        config.spec, config.size, batch, task=config.task, kind=kind, device=config.device
    )
    return one * config.devices if torchrun and config.device == "cpu" else one


def memory_problem(config: RunConfig) -> str | None:
    """Why the case cannot start here, by that estimate, against what its device has free (on a
    CPU the smaller of the memory available and the cgroup's limit); None where it fits."""
    return footprint.too_large(needed_bytes(config), environment.memory_bytes(config.device), config.id)


def cache_key(config: RunConfig, device_name: str) -> str:
    """What a compiled artifact depends on: versions, device, the code, the spec and the case.

    The tiled task compiles the forward at the tile's shape, as the infer case does, but in a
    folder of its own: its group may choose other exact forms, and a shared folder would then be
    emptied and compiled afresh by each in turn.
    """
    case = config.to_dict()
    for label in ("weights_file", "scaling", "image_size"):  # the same graphs whatever these are
        case.pop(label)
    text = json.dumps(
        [environment.versions(), device_name, environment.code_hash(), case], sort_keys=True, default=str
    )
    return _digest(text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _save_reference(file: Path, reference: dict[str, Any], own_noise: dict[str, float]) -> None:
    """torch eager's reference outputs (and its own error) for a later run on the same key."""
    arrays = {}
    for kind, value in reference.items():  # "gradients" and "weights" hold a tensor per name
        arrays |= {f"{kind}/{n}": v for n, v in value.items()} if isinstance(value, dict) else {kind: value}
    # A file object: given a path, np.savez would add ".npz" to the temporary file's name.
    with atomic_output(file, what="reference") as temporary, temporary.open("wb") as handle:
        np.savez(handle, own_noise=json.dumps(own_noise), **arrays)
    seal(file)


def _load_reference(file: Path) -> tuple[dict[str, Any], dict[str, float]]:
    reference: dict[str, Any] = {}
    with np.load(file) as saved:
        for name in saved.files:
            kind, _, tensor = name.partition("/")
            if tensor:
                reference.setdefault(kind, {})[tensor] = saved[name]
            elif name != "own_noise":
                reference[name] = saved[name]
        own_noise = json.loads(str(saved["own_noise"]))
    return reference, own_noise


# The reference's own memory format first: its outputs are the reference; the other's error counts too.
REFERENCE_FORMATS = ("contiguous", "channels_last")  # one worker: no cold compile to measure
# Runtime paths run the file exported from the model as built (native up-conv, NCHW): their
# runtimes choose their own layouts and kernels.
PINNED_FORMS = {
    "torch": ("upconv", "memory_format", "freezing", "calibration_repeats"),
    "jax": ("upconv",),
    "runtime": (),
}
# Compiled code's best forms are not eager's (run -7: eager chose NCHW for inference at 64 px,
# where compiled NCHW took 94 ms and compiled channels_last 67 ms). So compiled torch paths choose
# their own, compiled: the memory format with a cold worker per format, since it changes the whole
# graph; the up-conv form in those workers, on the layer (bench/runners/torch_runner.py).
OWN_FORMS = {path: ("memory_format", "upconv", "freezing") for path in COMPILED_TORCH_PATHS}
CALIBRATION_FORMS = ("calibration_repeats",)  # a calibration path's own: its extra work, timed once
COLD_TIMED_FORM = "memory_format"
# Timed in the cold worker after its cold call, by these worker commands (freezing only where it
# applies: compiled inference on a CPU)
TIMED_AFTER_COLD = {"upconv": "upconv_forms", "freezing": "freezing_forms"}
FORM_VALUES = {"upconv": UPCONVS, "memory_format": MEMORY_FORMATS, "freezing": FREEZINGS}  # each with "auto"
OWN_FORM_ROUNDS = 5  # rounds of each form, in turn, after the cold calls
# Untimed interleaved blocks before each replicate's rounds. In an A/A pilot of this session (torch
# eager against an identical path, train 64 px; the run was made with the engine before this line and
# not kept) the first block after the group's fresh workers started ran about 60% slower on every
# path, and the slowdown lasted into the next block: the machine settling after several processes
# start, which the first timed places of every replicate then paid (the identical path came out
# 0.89x, all five workers alike). With this warm-up the next pilot's A/A came out 1.02x.
WARM_UP_SECONDS = 3.0
# Timed blocks per worker at least, for its fastest round to be a clean one (stats.worker_figures):
# rounds here run 20-50% slow now and then, in stretches, on any path.
BLOCKS_PER_WORKER = 5
MEMORY_HEADROOM = 0.8  # of a device's memory, what the live workers of a group may hold together
MAX_ROUNDS = 1000  # per case, whatever the interval
GUESS_SECONDS = {"cpu": 40.0, "cuda": 90.0}  # a case never run before, for the first estimate


class CaseSkipped(Exception):
    """A case not started (``--max-minutes`` was reached) or that its path cannot run (``NOT_RUN``)."""


# Statuses of cases that did not run and did not fail: pytest skips them
NOT_RUN = ("skipped", "not-applicable", "not-installed")


def own_forms(path: str) -> tuple[str, ...]:
    """The forms a path chooses itself rather than take its framework's (``OWN_FORMS``)."""
    return CALIBRATION_FORMS if calibration_effect(path) is not None else OWN_FORMS.get(path, ())


def rotation(count: int, block: int) -> list[int]:
    """The order of a group's paths in a block: A B C, then B C A, then C A B, ..."""
    return [(block + i) % count for i in range(count)]


def group_key(config: RunConfig) -> str:
    """What the competing cases share: everything but the path."""
    fields = config.to_dict()
    for name in ("path", "weights_file", *{n for names in PINNED_FORMS.values() for n in names}):
        fields.pop(name, None)
    return json.dumps(fields, sort_keys=True, default=str)


def _chosen_forms(cold: dict[str, Any]) -> dict[str, Any]:
    """The forms a cold worker chose, with the seconds each was timed at, as its settings name them."""
    return {**cold["forms"], **cold.get("forms_seconds", {})}


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


def to_benchmark(benchmark, seconds: list[float]) -> None:
    """Hand rounds timed in a worker to pytest-benchmark, which keeps them in benchmark.json and
    its tables as if it had timed them (its own timer would also count the messaging)."""
    benchmark._mode = "rounds timed in a worker"  # used once, as pedantic() would mark it
    if not seconds:  # untimed (--benchmark-disable): nothing to keep
        return
    metadata = benchmark._make_stats(1)
    for value in seconds:
        metadata.update(value)


@dataclass(eq=False)  # one per worker, told apart by identity
class Prepared:
    """A case whose worker has compiled, passed the gate and waits for its rounds."""

    config: RunConfig
    worker: Worker
    record: dict[str, Any]
    setup_seconds: float  # references, workers, compiles and the gate: its own, not its group's
    cold: dict[str, Any] | None
    first_cached: float
    peak_memory_bytes: int | None = None  # the largest of its workers' peaks that hold no gate
    footprint_bytes: int | None = None  # its first worker's peak through set-up and gate: to schedule by
    # The worker now: went through the gate before its rounds (the others are checked after),
    # and its peak holds none of the gate's allocations (read before any check, or reset after it).
    gated: bool = True
    peak_counts: bool = True
    rounds: list[float] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)  # the replicate (worker process) of each round
    # Its own wall time so far, set-up included, against --case-timeout: what its workers took, not
    # the rounds of the other paths interleaved with its own.
    spent: float = 0.0

    def __post_init__(self) -> None:
        self.spent = self.setup_seconds


@dataclass
class Sweep:
    """What the cases of one benchmark run share: options, references, the weights file, records."""

    progress_file: Path | None = None
    compile_cache: Path = field(default_factory=default_compile_cache)
    case_timeout: float = 900.0
    timing: bool = True  # False with --benchmark-disable: each case runs once, untimed, no cold compile
    min_rounds: int = 5
    max_time: float = 1.0
    target_ci: float = 0.02
    replicates: int = 3  # fresh worker processes per case, one after another, for the process's luck
    max_replicates: int = 12  # the most, while a comparison is undecided and the budget allows
    group_budget: float = 240.0  # seconds of sampling per group (rounds and fresh workers), after set-up
    margin: float = stats.MARGIN
    run_spread: float = stats.RUN_SPREAD
    max_minutes: float | None = None
    cases: list[RunConfig] = field(default_factory=list)  # the run's, for its groups and estimates
    announce: Callable[[str], None] | None = None  # progress lines, to the terminal
    records: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _references: dict[str, tuple] = field(default_factory=dict)
    _starts: dict[Path, gate.Start] = field(default_factory=dict)
    _pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # measured, not yet handed over
    _forms: dict[str, dict[str, Any]] = field(default_factory=dict)
    _peaks: dict[tuple, float | str] = field(default_factory=dict)  # by (device, precision, tf32)

    # -- references and the canonical weights ------------------------------------------------

    def _reference_folder(self, config: RunConfig) -> Path:
        """Where a spec's canonical weights file and its references are kept between runs: they are
        a function of the versions, the code (impls/, bench/runners/, bench/cells.py) and the spec."""
        key = json.dumps([environment.versions(), environment.code_hash(), config.spec.to_json()])
        return self.compile_cache / "references" / _digest(key)

    def _weights_file(self, config: RunConfig) -> Path:
        return self._reference_folder(config) / "weights.safetensors"

    def _reference(self, config: RunConfig, deadline: float) -> tuple[dict, dict[str, float]]:
        """torch eager fp32 (TF32 off) outputs on the timed batch, and torch eager's own error per
        tensor in the case's precision (bench/gate.py): against fp64 for fp32, against fp32 for bf16
        or TF32; the largest of its errors on the inputs of gate.NOISE_SEEDS, in each memory format
        torch eager may run in, since either is torch eager.

        The first reference worker of a spec writes the canonical weights file every worker loads.
        """
        tf32 = config.tf32 and config.device != "cpu"
        low_precision = config.precision == "bf16" or tf32
        # A data-parallel run's training against torch eager's over as many devices (DDP's
        # BatchNorm, per device unless --sync-bn, is another function than one device's); its
        # forward against one device's, which it equals.
        parallel = config.task == "train" and config.devices is not None
        reference_config = config.replace(
            path="torch-eager",
            devices=config.devices if parallel else None,
            sync_bn=config.sync_bn and parallel,
            scaling=None,
            upconv="native",
            memory_format="contiguous",
            weights_file=None,
        )
        key = reference_config.replace(precision=config.precision if low_precision else "fp32").to_json()
        weights = self._weights_file(config)
        name = _digest(
            json.dumps([key, environment.device_name(config.device), REFERENCE_FORMATS, gate.NOISE_SEEDS])
        )
        saved = weights.parent / f"{name}.npz"
        if key not in self._references and self._whole(weights) and self._whole(saved):
            self._references[key] = _load_reference(saved)
        if key not in self._references:
            weights.parent.mkdir(parents=True, exist_ok=True)
            pairs: list[tuple[dict, dict]] = []
            for memory_format in REFERENCE_FORMATS:
                pairs += self._eager_pairs(
                    reference_config.replace(memory_format=memory_format), weights, deadline
                )
            reference = pairs[0][1] if low_precision else pairs[0][0]  # fp32, contiguous, the timed batch
            self._references[key] = (reference, gate.noise(pairs, config.spec, self._start(config)))
            _save_reference(saved, *self._references[key])
        return self._references[key]

    def _start(self, config: RunConfig) -> gate.Start:
        """The weights and learning rate the gated training steps start from."""
        file = self._weights_file(config)
        if file not in self._starts:
            self._starts[file] = gate.Start(convert.load(file)[0], config.learning_rate)
        return self._starts[file]

    def _gate(
        self, config: RunConfig, worker: Worker, reference: dict, own_noise: dict[str, float]
    ) -> gate.GateResult:
        """The worker's outputs against the reference, within the gate's allowances."""
        return gate.check(worker.outputs(config.task), reference, own_noise, config.spec, self._start(config))

    def _eager_pairs(self, config: RunConfig, weights: Path, deadline: float) -> list[tuple[dict, dict]]:
        """torch eager's outputs in the case's precision beside their exact twins, on the batch of
        each of gate.NOISE_SEEDS (the timed one first), in ``config``'s memory format: fp32 beside
        fp64, bf16 or TF32 beside fp32."""
        task = config.task
        tf32 = config.tf32 and config.device != "cpu"
        with Worker(config.replace(precision="fp32", tf32=False), deadline=deadline) as worker:
            if not self._whole(weights):
                worker.call("write_initial_weights", str(weights))
                seal(weights)
            fp32 = [worker.outputs(task, seed) for seed in gate.NOISE_SEEDS]
            if config.precision != "bf16" and not tf32:
                return [
                    (own, worker.outputs_in("fp64", task, seed))
                    for own, seed in zip(fp32, gate.NOISE_SEEDS, strict=True)
                ]
            if not tf32:
                return [
                    (worker.outputs_in("bf16", task, seed), exact)
                    for exact, seed in zip(fp32, gate.NOISE_SEEDS, strict=True)
                ]
        with Worker(
            config.replace(weights_file=str(weights)), deadline=deadline
        ) as worker:  # TF32: process-wide
            return [
                (worker.outputs(task, seed), exact)
                for exact, seed in zip(fp32, gate.NOISE_SEEDS, strict=True)
            ]

    # -- a case as pytest sees it -----------------------------------------------------------

    def run(self, config: RunConfig, benchmark) -> dict[str, Any]:
        """Measure ``config``'s group if that is not done yet; ``config``'s record into ``benchmark``.
        Raises CaseSkipped or CaseFailure for a case that produced no number."""
        if config.id not in self._pending:
            self.measure_group(self.group_of(config))
        record = self._pending.pop(config.id)
        if record["status"] in NOT_RUN:
            raise CaseSkipped(f"{record['status']}: {record['message']}")
        if record["status"] != "ok":
            raise CaseFailure(record["status"], record["message"])
        to_benchmark(benchmark, record.get("rounds_seconds", []))
        benchmark.extra_info.update(record)
        return record

    def group_of(self, config: RunConfig) -> list[RunConfig]:
        """``config`` and the run's other cases that compete with it, not yet measured."""
        key, measured = group_key(config), {r["id"] for r in self.records}
        group = [c for c in self.cases if group_key(c) == key and c.id not in measured]
        return group if config in group else [config]

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._pending[record["id"]] = record
        if self.progress_file is not None:
            with self.progress_file.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        if self.announce is not None:
            self.announce(self._progress_line(record))

    # -- a group ------------------------------------------------------------------------------

    def measure_group(self, configs: list[RunConfig]) -> None:
        """Set up each case of the group, then time their rounds interleaved; record every case."""
        prepared: list[Prepared] = []
        parts = 0
        current: dict[str, Any] | None = None
        try:
            for config in configs:
                current = {"case": config.to_dict(), "id": config.id, "group": config.group}
                if self.out_of_time():
                    self.record({**current, "status": "skipped", "message": self._skip_reason()})
                    continue
                cannot = unavailable(config)
                if cannot is not None:  # by design, not a failure: no worker is started
                    self.record({**current, "status": cannot[0], "message": cannot[1]})
                    continue
                too_large = memory_problem(config)
                if too_large:  # rather than started and killed, with whatever else the kernel picks
                    self.record(
                        {**current, "status": "out-of-memory", "message": f"not started: {too_large}"}
                    )
                    continue
                crowded = self._crowded(prepared)
                if crowded:  # measure what is set up, then go on with a device of its own
                    parts += 1
                    self._time_and_record(prepared, f"sequential: {crowded}")
                    prepared = []
                started = time.perf_counter()
                try:
                    try:
                        prepared.append(self._prepare(config, current, started))
                    except WorkerError as error:
                        if error.status != "out-of-memory" or not prepared:
                            raise
                        # it may not fit beside the others: they are measured first, then it alone
                        parts += 1
                        self._time_and_record(prepared, "sequential: out of memory beside the others")
                        prepared = []
                        prepared.append(self._prepare(config, current, started))
                except Exception as error:  # this case alone fails: the group goes on
                    current["case_wall_seconds"] = time.perf_counter() - started
                    self.record({**current, **self._failure(error)})
                current = None
            schedule = "interleaved" if parts == 0 else "sequential: the group's workers did not fit at once"
            self._time_and_record(prepared, schedule)
        except BaseException as error:
            recorded = {id(r) for r in self.records}
            failed = [p.record for p in prepared if id(p.record) not in recorded]
            if current is not None:
                failed.append(current)
            for p in prepared:
                p.worker.close()
            for record in failed:
                self.record({**record, **self._failure(error)})
            if not isinstance(error, Exception):
                raise  # Ctrl-C, SIGTERM: recorded, then the run stops as asked

    @staticmethod
    def _failure(error: BaseException) -> dict[str, Any]:
        if isinstance(error, CaseFailure | WorkerError):
            return {"status": error.status, "message": str(error)}
        if isinstance(error, Exception):
            return {
                "status": "error",
                "message": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=8),
            }
        return {"status": "interrupted", "message": "the run was stopped during this case"}

    def _crowded(self, prepared: list[Prepared]) -> str:
        """Why another worker would not fit beside the live ones ('' if it would): their peaks,
        plus one more like the largest, against what the device holds."""
        peaks = [p.footprint_bytes or 0 for p in prepared]
        if not peaks:
            return ""
        device = prepared[0].config.device
        capacity = environment.memory_bytes(device) + (sum(peaks) if device == "cpu" else 0)
        needed = sum(peaks) + max(peaks)
        if needed <= MEMORY_HEADROOM * capacity:
            return ""
        return (
            f"{len(prepared) + 1} workers would need about {needed / 2**30:.1f} GiB of the "
            f"{capacity / 2**30:.1f} GiB the device holds"
        )

    # -- one case's set-up ------------------------------------------------------------------

    def _forms_key(self, config: RunConfig, owner: str) -> str:
        device = environment.device_name(config.device)
        stamp = [environment.versions(), environment.code_hash(), device, group_key(config), owner]
        return _digest(json.dumps(stamp))

    def _owner(self, config: RunConfig, form: str) -> str:
        """Who chooses ``form`` for ``config``: its path (``OWN_FORMS``) or its framework's first path."""
        return config.path if form in own_forms(config.path) else config.framework

    def _saved_forms(self, config: RunConfig, owner: str) -> dict[str, Any] | None:
        key = self._forms_key(config, owner)
        if key not in self._forms:
            saved = self._read_json(self.compile_cache / "forms.json").get(key)
            if saved is not None:
                self._forms[key] = {**saved, "earlier_run": True}
        return self._forms.get(key)

    def _save_forms(self, config: RunConfig, owner: str, entry: dict[str, Any]) -> None:
        file = self.compile_cache / "forms.json"
        key = self._forms_key(config, owner)
        self._write_json(file, {**self._read_json(file), key: entry})
        self._forms[key] = {**entry, "earlier_run": False}

    def forms(self, config: RunConfig) -> dict[str, dict[str, Any]]:
        """The exact forms chosen for ``config``'s group, by owner (its framework, and its path for
        ``OWN_FORMS``), with the timings behind each choice: in this run, or in an earlier one on the
        same versions, code and device (kept in the compile-cache folder, so that runs replicate
        rather than re-draw a choice between forms within a few percent of each other)."""
        owners = dict.fromkeys([config.framework, config.path])
        return {o: entry for o in owners if (entry := self._saved_forms(config, o)) is not None}

    def _pin(self, config: RunConfig) -> RunConfig:
        """``config`` with the group's chosen forms, so that every worker of the framework compiles
        the same graphs: each form as its owner chose it (untimed, where nothing is measured, the
        framework's choice stands in for a path's own); plain paths keep their fixed forms."""
        if config.path in PLAIN_PATHS:
            return config
        chosen: dict[str, str] = {}
        for owner, entry in self.forms(config).items():  # the framework's, then the path's own
            own = {n: v for n, v in entry["chosen"].items() if self._owner(config, n) == owner}
            chosen.update(own if self.timing else entry["chosen"])
        return config.replace(**{n: v for n, v in chosen.items() if getattr(config, n) == "auto"})

    def _remember(self, config: RunConfig, settings: dict[str, Any]) -> RunConfig:
        """Keep the forms a worker chose, for its path or its framework's group (whoever owns
        each), where none were chosen yet."""
        if config.path in PLAIN_PATHS:
            return config
        for owner in dict.fromkeys([config.framework, config.path]):
            entry = self._saved_forms(config, owner) or {"chosen": {}, "seconds": {}, "by": {}}
            new = [
                n
                for n in PINNED_FORMS[config.framework]
                if n in settings and n not in entry["chosen"] and self._owner(config, n) == owner
            ]
            if new:
                self._save_forms(
                    config,
                    owner,
                    {
                        **entry,
                        "chosen": {**entry["chosen"], **{n: settings[n] for n in new}},
                        "seconds": {**entry["seconds"], **{n: settings.get(f"{n}_seconds") for n in new}},
                        "by": {**entry["by"], **dict.fromkeys(new, config.path)},
                    },
                )
        return self._pin(config)

    def _prepare(
        self, config: RunConfig, record: dict[str, Any], started: float, deadline: float | None = None
    ) -> Prepared:
        deadline = time.monotonic() + self.case_timeout if deadline is None else deadline
        case = config
        lap = _Laps(record.setdefault("phase_seconds", {}))  # what the case's time went on
        reference, own_noise = self._reference(config, deadline)
        lap("reference")
        asked = config.replace(weights_file=str(self._weights_file(config)))
        config = self._pin(asked)
        # Untimed (--benchmark-disable, as in `make test`) nothing is measured: the cases share one
        # folder, as a user's programs share the frameworks' caches, and compile once what they can.
        folder = self.compile_cache / "untimed"
        cold = None
        if self.timing and not compiles_nothing(config.path):
            cold, config, folder = self._cold(asked, deadline)
            lap("cold_worker")
        elif self.timing:
            folder = self._entry(asked)
        folder.mkdir(parents=True, exist_ok=True)
        worker = Worker(config, compile_cache=folder, deadline=deadline)
        lap("worker_start")
        try:
            first_cached = worker.call("first_call")
            lap("first_call")
        except WorkerError as error:
            worker.close()
            if cold is None or not cold["reused"] or error.status not in ("error", "crashed"):
                raise
            # What an earlier run compiled did not load: compiled again, once, from an emptied folder
            # (the retry finds no cold figure to reuse, so it cannot come back here).
            self._say(
                f"{case.id}: the compiled code kept in {folder} did not load "
                f"({str(error).splitlines()[0]}); the folder is cleared and the case compiled again"
            )
            shutil.rmtree(folder, ignore_errors=True)
            return self._prepare(case, record, started, deadline)
        except BaseException:
            worker.close()
            raise
        try:
            config = self._remember(config, worker.settings)
            if self.timing and cold is None:  # compiles nothing, caches nothing: one worker
                cold = {"first_call_seconds": first_cached, "reused": False, "no_compiler": True}
            result = self._gate(config, worker, reference, own_noise)
            if not result.passed:
                raise CaseFailure("parity-failed", _parity_failure(config, result))
            record.update(
                forms=None if config.path in PLAIN_PATHS else self.forms(config),
                parity={"errors": result.errors, "allowed": result.allowed},
                messaging_seconds=worker.messaging_seconds(),
                compile_folder=str(folder),
            )
            footprint = worker.peak_memory_bytes()
            peak_counts = worker.call("reset_peak_memory")  # the gate's allocations out of the figure
            lap("parity_gate")
        except BaseException:
            worker.close()
            raise
        return Prepared(
            config,
            worker,
            record,
            time.perf_counter() - started,
            cold,
            first_cached,
            footprint_bytes=footprint,
            peak_counts=peak_counts,
        )

    def _entry(self, asked: RunConfig) -> Path:
        """The compile folder of a case as asked for ("auto" forms: the choices are kept in
        forms.json), but with a compiled path's own form as chosen: each form compiles its own."""
        form = COLD_TIMED_FORM
        own = self._saved_forms(asked, asked.path) if form in own_forms(asked.path) else None
        if own is not None and form in own["chosen"] and getattr(asked, form) == "auto":
            asked = asked.replace(**{form: own["chosen"][form]})
        return self.compile_cache / cache_key(asked, environment.device_name(asked.device))

    def _cold(self, asked: RunConfig, deadline: float) -> tuple[dict, RunConfig, Path]:
        """The cold first call, measured in a fresh worker with empty caches, or reused from an
        earlier run's folder; the case pinned to the forms it compiled, and its folder."""
        config = self._pin(asked)
        form = COLD_TIMED_FORM
        if form in own_forms(asked.path) and getattr(config, form) == "auto":
            cold = self._cold_per_form(asked, config, form, deadline)
            entry = self._entry(asked)  # the chosen form's, now that it is saved
        else:
            entry = self._entry(asked)
            saved = self._read_json(entry / "cold.json")
            if saved and all(getattr(config, n) in ("auto", v) for n, v in saved["forms"].items()):
                return {**saved, "reused": True}, self._remember(asked, _chosen_forms(saved)), entry
            cold, worker = self._cold_worker(config, entry, deadline)
            worker.close()
        # The same graphs from now on: the cached worker must not pick the other form.
        return {**cold, "reused": False}, self._remember(asked, _chosen_forms(cold)), entry

    def _cold_worker(self, config: RunConfig, entry: Path, deadline: float) -> tuple[dict, Worker]:
        """A fresh worker in an emptied folder, after its first call and the forms timed after
        it (``_after_cold``); the worker is left open."""
        cold, worker = self._cold_call(config, entry, deadline)
        return self._after_cold(config, cold, worker, entry, deadline)

    def _after_cold(
        self, config: RunConfig, cold: dict, worker: Worker, entry: Path, deadline: float
    ) -> tuple[dict, Worker]:
        """A compiled path that chooses its own up-conv form or freezing times them compiled in its
        cold worker after the cold call (``TIMED_AFTER_COLD``: compiling them before would warm the
        cold figure, 35 s instead of 45-50 s, seen here); where a form other than the one built
        wins, the winners' cold call is measured afresh in a new worker. The worker is left open."""
        timed = [
            form
            for form in TIMED_AFTER_COLD
            if form in own_forms(config.path) and getattr(config, form) == "auto" and form in cold["forms"]
        ]
        try:
            seconds = {form: worker.call(TIMED_AFTER_COLD[form]) for form in timed}
            chosen = {form: forms.fastest(seconds[form]) for form in timed}
            if any(chosen[form] != cold["forms"][form] for form in timed):
                worker.close()
                cold, worker = self._cold_call(config.replace(**chosen), entry, deadline)
        except BaseException:
            worker.close()
            raise
        for form in timed:
            cold["forms"][form] = chosen[form]
            cold["forms_seconds"][f"{form}_seconds"] = seconds[form]
        return cold, worker

    def _cold_call(self, config: RunConfig, entry: Path, deadline: float) -> tuple[dict, Worker]:
        """A fresh worker in an emptied folder, after its (cold) first call; left open."""
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        started = time.perf_counter()
        worker = Worker(config, compile_cache=entry, deadline=deadline)
        try:
            first_call = worker.call("first_call")
        except BaseException:
            worker.close()
            raise
        cold = {
            "first_call_seconds": first_call,
            "forms": {n: worker.settings[n] for n in PINNED_FORMS[config.framework] if n in worker.settings},
            "forms_seconds": {
                f"{n}_seconds": worker.settings.get(f"{n}_seconds") for n in PINNED_FORMS[config.framework]
            },
            "worker_seconds": time.perf_counter() - started,
        }
        return cold, worker

    def _cold_per_form(self, asked: RunConfig, config: RunConfig, form: str, deadline: float) -> dict:
        """``form`` chosen compiled: one cold worker per value, each in an empty folder of its own,
        then ``OWN_FORM_ROUNDS`` rounds of each in turn. The choice and its timings go to forms.json;
        the faster's worker then times the forms chosen after a cold call (``_after_cold``: in the
        winner alone, each such compile being seconds), and its cold call is returned; its folder
        is the case's from now on."""
        entries = {v: self._entry(asked.replace(**{form: v})) for v in FORM_VALUES[form] if v != "auto"}
        colds: dict[str, dict[str, Any]] = {}
        workers: dict[str, Worker] = {}
        try:
            for value, entry in entries.items():
                candidate = config.replace(**{form: value})
                colds[value], workers[value] = self._cold_call(candidate, entry, deadline)
            rounds: dict[str, list[float]] = {value: [] for value in entries}
            for _ in range(OWN_FORM_ROUNDS):
                for value, worker in workers.items():
                    rounds[value].append(self.time_round(worker))
            seconds = {value: float(np.median(r)) for value, r in rounds.items()}
            chosen = forms.fastest(seconds)
            for value in entries:
                if value != chosen:
                    workers.pop(value).close()
                    shutil.rmtree(entries[value], ignore_errors=True)  # caches no worker will read
            winner = config.replace(**{form: chosen})
            cold, workers[chosen] = self._after_cold(
                winner, colds[chosen], workers[chosen], entries[chosen], deadline
            )
        finally:
            for worker in workers.values():
                worker.close()
        choice = {
            "chosen": {form: chosen},
            "seconds": {form: seconds},
            "by": {form: config.path},
            "timed": f"compiled, one cold worker per {form}, median of {OWN_FORM_ROUNDS} rounds each in turn",
        }
        self._save_forms(asked, asked.path, choice)
        return cold

    # -- the rounds ---------------------------------------------------------------------------

    def time_round(self, worker: Worker) -> float:
        """One round: one call, timed inside the worker with the device synchronised."""
        return worker.call("time_calls", 1)[0]

    def _time_and_record(self, prepared: list[Prepared], schedule: str) -> None:
        rounds_started = time.perf_counter()
        sampling = None
        if self.timing:
            failures, sampling = self._sample(prepared)
        else:
            failures = self._once(prepared)
        share = (time.perf_counter() - rounds_started) / max(1, len(prepared))
        for p in prepared:
            try:
                record = p.record
                error = failures.get(p) or self._retire(p)
                if error is not None:
                    record.update(status=error.status, message=str(error))
                else:
                    record.update(self._result(p, schedule))
                    record["status"] = "ok"
                    if sampling is not None:
                        record["sampling"] = sampling
                record["case_wall_seconds"] = p.setup_seconds + share
                record["phase_seconds"]["rounds"] = share
            finally:
                p.worker.close()
            self._remember_wall(p)
            self.record(record)

    def _sample(self, prepared: list[Prepared]) -> tuple[dict[Prepared, WorkerError], dict[str, Any]]:
        """Replicates until the group is decided: at least ``replicates`` (fresh workers for every
        path, each with its blocks of rounds), then one more while a comparison is inconclusive and
        another would end within ``group_budget`` seconds (at the mean cost of those so far), up to
        ``max_replicates``. The rounds' time goes where the answer is still open."""
        started = time.perf_counter()
        failures = self._interleave(prepared, 0)
        replicate, stopped = 1, "decided"
        while True:
            live = [p for p in prepared if p not in failures]
            spent = time.perf_counter() - started
            if not live:
                stopped = "no case left"
                break
            if replicate >= self.replicates:
                judgement = self._judgement(live)
                if judgement is None or judgement.decided:
                    stopped = "decided" if judgement is not None else "nothing to compare"
                    break
                if replicate >= self.max_replicates:
                    stopped = f"undecided after --max-replicates {self.max_replicates}"
                    break
                if spent + spent / replicate > self.group_budget:
                    stopped = f"undecided when the group budget ({self.group_budget:g} s) ran out"
                    break
            failures |= self._restart(live)
            failures |= self._interleave([p for p in live if p not in failures], replicate)
            replicate += 1
        seconds = time.perf_counter() - started
        return failures, {
            "workers": replicate,
            "seconds": seconds,
            "seconds_per_worker": seconds / replicate,
            "group_budget": self.group_budget,
            "margin": self.margin,
            "run_spread": self.run_spread,
            "stopped": stopped,
        }

    def _judgement(self, live: list[Prepared]) -> stats.Judgement | None:
        """The group's comparisons as the report will judge them; None with fewer than two paths."""
        rounds = {p.config.path: (p.rounds, p.blocks, p.workers) for p in live}
        competing, calibration, plain = verdict_roles(rounds)
        if not competing or len(competing) + len(calibration) + len(plain) < 2:
            return None
        return stats.judge(rounds, competing, calibration, self.margin, self.run_spread, plain)

    def peak_tflops(self, config: RunConfig) -> float | str:
        """The device's measured peak in the case's precision (environment.peak_tflops, a process of
        its own), or why it could not be measured: the run goes on without utilization."""
        key = (config.device, config.precision, config.tf32 and config.device != "cpu")
        if key not in self._peaks:
            try:
                self._peaks[key] = environment.peak_tflops(*key)
            except environment.ProbeError as error:
                self._peaks[key] = str(error).splitlines()[0]
                self._say(
                    f"the device's peak could not be measured ({self._peaks[key]}): no utilization figures"
                )
        return self._peaks[key]

    # -- what the compile-cache folder keeps between runs ---------------------------------------

    def _whole(self, file: Path) -> bool:
        """Whether ``file``, kept in the compile-cache folder, is there as it was written (its digest
        beside it); one that is not is named, discarded and made again by whoever needs it."""
        if not file.exists():
            return False
        problem = seal_problem(file)
        if problem is None:
            return True
        self._say(f"discarded {file}: {problem}; it is made again")
        discard(file)
        return False

    def _read_json(self, file: Path) -> dict:
        if not self._whole(file):
            return {}
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError) as error:  # sealed, yet unreadable: made so by hand
            self._say(f"discarded {file}: {error}; it is made again")
            discard(file)
            return {}

    def _write_json(self, file: Path, value: dict) -> None:
        write_text(file, json.dumps(value))  # whole or not at all: the next run reads it back
        seal(file)

    def _say(self, line: str) -> None:
        if self.announce is not None:
            self.announce(line)

    def _deadline(self, p: Prepared) -> float:
        """When what is left of the case's --case-timeout runs out, from now."""
        return time.monotonic() + max(0.0, self.case_timeout - p.spent)

    def _charged(self, p: Prepared, command: Callable[[], T]) -> T:
        """``command`` for ``p``'s worker, within what is left of the case's --case-timeout, its time
        added to the case's own: all of a case's phases and workers draw on the one limit."""
        p.worker.deadline = self._deadline(p)
        started = time.perf_counter()
        try:
            return command()
        finally:
            p.spent += time.perf_counter() - started

    def _once(self, prepared: list[Prepared]) -> dict[Prepared, WorkerError]:
        failures = {}
        for p in prepared:
            try:
                self._charged(p, lambda p=p: p.worker.call("call"))
            except WorkerError as error:
                failures[p] = error
        return failures

    def _restart(self, prepared: list[Prepared]) -> dict[Prepared, WorkerError]:
        """Fresh workers for another replicate: each with its own luck of the process. They find
        the compiled code in the cases' folders; their first call (loading it) is not timed. All
        are started before any is waited for, so that their imports and builds overlap (the
        group's workers fit together: they just ran so)."""
        failures: dict[Prepared, WorkerError] = {}
        for p in prepared:
            try:
                error = self._retire(p)
            finally:
                p.worker.close()
            if error is not None:
                failures[p] = error
        started: dict[Prepared, tuple[Worker, float]] = {}
        try:
            for p in prepared:
                if p in failures:
                    continue
                compile_cache = p.record["compile_folder"]
                worker = Worker(
                    p.config, compile_cache=compile_cache, deadline=self._deadline(p), connect=False
                )
                started[p] = worker, time.perf_counter()
            for p, (worker, at) in started.items():
                try:
                    worker.connect()
                    worker.call("first_call")
                except WorkerError as error:
                    worker.close()
                    failures[p] = error
                else:
                    p.worker, p.gated, p.peak_counts = worker, False, True
                finally:
                    p.spent += time.perf_counter() - at
        except BaseException:
            for worker, _ in started.values():
                worker.close()
            raise
        return failures

    def _retire(self, p: Prepared) -> WorkerError | None:
        """After a worker's rounds: its peak (where it holds no gate), then, for a worker that did
        not go through the gate before its rounds, its outputs against the gated reference, within
        the gate's allowances; the failure, if any (the worker is left to the caller to close)."""
        return self._charged(p, lambda: self._check_retired(p))

    def _check_retired(self, p: Prepared) -> WorkerError | None:
        if p.peak_counts:
            p.peak_memory_bytes = _larger(p.peak_memory_bytes, p.worker.peak_memory_bytes())
        if p.gated:
            return None
        try:
            reference, own_noise = self._reference(p.config, p.worker.deadline)
            result = self._gate(p.config, p.worker, reference, own_noise)
        except WorkerError as error:
            return error
        return (
            None
            if result.passed
            else WorkerError(
                "parity-failed", _parity_failure(p.config, result, p.workers[-1] if p.workers else 0)
            )
        )

    def _warm_up(self, prepared: list[Prepared]) -> dict[Prepared, WorkerError]:
        """Untimed blocks, interleaved as the timed ones, for ``WARM_UP_SECONDS`` (one at least)."""
        failures: dict[Prepared, WorkerError] = {}
        started, live, block = time.perf_counter(), list(prepared), 0
        while live and (block == 0 or time.perf_counter() - started < WARM_UP_SECONDS):
            for index in rotation(len(live), block):
                p = live[index]
                try:
                    self._charged(p, lambda p=p: p.worker.call("call"))
                except WorkerError as error:
                    failures[p] = error
            live = [p for p in live if p not in failures]
            block += 1
        return failures

    def _interleave(self, prepared: list[Prepared], replicate: int) -> dict[Prepared, WorkerError]:
        """After a warm-up, blocks of one round per case, in rotated order (continued across
        replicates, so that every path takes every place in a block), until every median of this
        replicate is known to ``target_ci`` (checked at growing intervals: the bootstrap is not
        free) or its share of the time is up."""
        failures = self._warm_up(prepared)
        budget = self.max_time * len(prepared) / self.replicates
        fewest = max(BLOCKS_PER_WORKER, math.ceil(self.min_rounds / self.replicates))
        first = 1 + max((b for p in prepared for b in p.blocks), default=-1)
        started = time.perf_counter()
        live, block, next_check = [p for p in prepared if p not in failures], 0, fewest
        while live:
            for index in rotation(len(live), first + block):
                p = live[index]
                try:
                    p.rounds.append(self._charged(p, lambda p=p: self.time_round(p.worker)))
                    p.blocks.append(first + block)
                    p.workers.append(replicate)
                except WorkerError as error:
                    failures[p] = error
            live = [p for p in live if p not in failures]
            block += 1
            if block < fewest or not live:
                continue
            if block >= MAX_ROUNDS or time.perf_counter() - started >= budget:
                break
            if block >= next_check:
                next_check = math.ceil(block * 1.25)
                if all(
                    stats.median_interval(p.rounds[-block:]).relative_half_width() <= self.target_ci
                    for p in live
                ):
                    break
        return failures

    def _result(self, p: Prepared, schedule: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "peak_memory_bytes": p.peak_memory_bytes,
            "settings": p.worker.call("settings"),  # now: a runtime fills in its export at the first call
            "schedule": schedule,
        }
        if self.timing:
            info.update(rounds_seconds=p.rounds, round_blocks=p.blocks, round_workers=p.workers)
        info.update(self._extra_info(p))
        cold = p.cold
        if cold is not None and not cold["reused"] and not cold.get("no_compiler"):
            saved = {k: v for k, v in cold.items() if k != "reused"}
            saved["compile_seconds"] = info["compile_seconds_cold"]
            self._write_json(Path(p.record["compile_folder"]) / "cold.json", saved)
        return info

    def _extra_info(self, p: Prepared) -> dict:
        config = p.config
        device_name = environment.device_name(config.device)
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
            "first_call_seconds_cached": p.first_cached,
        }
        if config.task == "tiled":
            positions = tile_positions((config.image_size,) * 2, config.spec, config.size)
            tiles = math.ceil(len(positions) / config.batch) * config.batch  # zero tiles fill the last batch
            gflop = tiles * flops.gflop_per_image(config.spec, config.size, "infer")
            info.update(image_size=config.image_size, tiles_per_image=tiles)
        else:
            gflop = flops.gflop_per_image(config.spec, config.size, config.task)
        info["gflop_per_image"] = gflop
        if not self.timing:  # --benchmark-disable: ran once, untimed
            return info
        # as benchmark.json has them, so that progress.jsonl alone rebuilds the report
        info["stats"] = round_stats(p.rounds, p.workers)
        median = info["stats"]["estimate"]  # the one estimate (bench/stats.py)
        images_per_second = (1 if config.task == "tiled" else config.batch) / median
        if config.task == "tiled":
            info["megapixels_per_second"] = config.image_size**2 / 1e6 / median
        tflops = gflop * images_per_second / 1e3
        peak = self.peak_tflops(config)
        info.update(
            images_per_second=images_per_second,
            tflops=tflops,
            device_peak_tflops=None if isinstance(peak, str) else peak,
            utilization=None if isinstance(peak, str) else tflops / peak,
            compile_seconds_cached=max(p.first_cached - median, 0.0),
        )
        if isinstance(peak, str):
            info["device_peak_problem"] = peak
        cold = p.cold
        if cold is not None:
            if cold["reused"]:
                info["compile_seconds_cold"] = cold["compile_seconds"]
            else:
                info["compile_seconds_cold"] = max(cold["first_call_seconds"] - median, 0.0)
            info["compile_cold_reused"] = cold["reused"]
        return info

    # -- time: --max-minutes, and what is left ---------------------------------------------------

    def out_of_time(self) -> bool:
        return self.max_minutes is not None and time.monotonic() - self.started >= 60 * self.max_minutes

    def _skip_reason(self) -> str:
        elapsed = (time.monotonic() - self.started) / 60
        return (
            f"--max-minutes {self.max_minutes:g} reached ({elapsed:.1f} min into the run) "
            "before this case began"
        )

    def _walls_file(self) -> Path:
        return self.compile_cache / "case-seconds.json"

    def _wall_key(self, config: RunConfig) -> str:
        return _digest(json.dumps([config.path, group_key(config), environment.versions()]))

    def _remember_wall(self, p: Prepared) -> None:
        """What this case took, and how much of it was its cold compile, for later estimates."""
        if not self.timing or "case_wall_seconds" not in p.record:
            return
        file = self._walls_file()
        walls = self._read_json(file)
        cold = 0.0 if p.cold is None or p.cold["reused"] else p.cold.get("worker_seconds", 0.0)
        walls[self._wall_key(p.config)] = {
            "wall": p.record["case_wall_seconds"],
            "cold": cold,
            "entry": p.record["compile_folder"],
        }
        self._write_json(file, walls)

    def estimate_seconds(self, config: RunConfig, walls: dict | None = None) -> float | None:
        """A case's wall time as an earlier run measured it (in ``walls``, the saved case times, read
        here if not given), less a cold compile it will now reuse: its folder is still the one this
        case would use (the code or versions unchanged since) and holds a cold figure. None for a
        case never run."""
        walls = self._read_json(self._walls_file()) if walls is None else walls
        seen = walls.get(self._wall_key(config))
        if seen is None:
            return None
        entry = Path(seen["entry"])
        reused = entry == self._entry(config) and (entry / "cold.json").exists()
        return seen["wall"] - (seen["cold"] if reused else 0.0)

    def remaining(self) -> tuple[float, int]:
        """Seconds the cases not yet measured should take, and how many of them are guesses: a
        case never run counts as the mean of this run's cases so far, else GUESS_SECONDS."""
        done = [r["case_wall_seconds"] for r in self.records if "case_wall_seconds" in r]
        measured = {r["id"] for r in self.records}
        walls = self._read_json(self._walls_file())  # once, not once a case: this runs after every case
        total, guessed = 0.0, 0
        for config in self.cases:
            if config.id in measured:
                continue
            seconds = self.estimate_seconds(config, walls) if self.timing else None
            if seconds is None:
                guessed += 1
                guess = GUESS_SECONDS["cpu" if config.device == "cpu" else "cuda"]
                seconds = float(np.mean(done)) if done else guess
            total += seconds
        return total, guessed

    def _progress_line(self, record: dict[str, Any]) -> str:
        count, done = len(self.cases) or len(self.records), len(self.records)
        wall = record.get("case_wall_seconds")
        took = f" in {wall:.0f} s" if wall is not None else ""
        left, _ = self.remaining()
        status = record["status"]
        if status != "ok":
            status += f": {record.get('message', '')}"
        line = f"[{done}/{count}] {record['id']}: {status.splitlines()[0][:200]}{took}"
        if done < count:
            line += f"; about {_minutes(left)} left"
        return line


def _parity_failure(config: RunConfig, result: gate.GateResult, replicate: int = 0) -> str:
    worker = f" (worker {replicate + 1} of the case)" if replicate else ""
    return (
        f"parity gate: {config.path}{worker} differs from torch eager fp32: {result.describe()}; "
        "no number is reported for it"
    )


def _larger(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else max(a or 0, b or 0)


class _Laps:
    """Seconds since the last lap, filed under a name."""

    def __init__(self, laps: dict[str, float]) -> None:
        self.laps, self.last = laps, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
