"""The command line's option values to the run's cases, every value checked before anything runs.

Pure: it reads the values argparse parsed (pytest's ``config.option``, or a namespace parsed from
bench/options.py's table in a test) and raises ``OptionError``, whose message is the one line the
user sees; bench/plugin.py makes it pytest's usage error.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import environment, stats
from bench.device_names import simulated_devices
from bench.options import DEFAULT_SPECS, MAX_REPLICATES, SCALING_PATHS, defaults, flag
from bench.run_config import (
    CALIBRATION_REFERENCE,
    PATHS,
    PRECISIONS,
    SCALINGS,
    TASKS,
    WHOLE_INPUT_TASKS,
    RunConfig,
    calibration_path,
    paths_problem,
    whole_input_task,
)
from bench.sweep import WARM_UP_SECONDS, default_compile_cache, memory_problem, needed_bytes
from impls.checks import known
from impls.files import check_folder
from impls.spec import PADDINGS, SEARCH_LIMIT, UNetSpec

MIN_INSTANCE_NORM_SIDE = 2  # the largest degenerate bottleneck side for instance norm


class OptionError(ValueError):
    """A command line refused before anything runs; the message names the option and the fix."""


@dataclass(frozen=True)
class Matrix:
    """What a command line asks for: the cases, the data-parallel ones, the options every case
    shares (as the run records them) and the folders it writes."""

    cases: list[RunConfig]
    scaling: list[RunConfig]
    options: dict[str, Any]
    results_dir: Path
    compile_cache: Path

    @property
    def max_time(self) -> float:
        """Seconds of rounds per case: --benchmark-max-time, or the device's default."""
        return self.options["max_time"]


def build(values: Any, max_time: float | None, min_rounds: int) -> Matrix:
    """The matrix of the option ``values`` (attributes named as the options' dests); ``max_time``
    is pytest-benchmark's --benchmark-max-time where the command line gives it, else None."""
    cases, options = _matrix(values, max_time, min_rounds)
    scaling = _scaling_matrix(values, cases)
    _check_memory(cases + scaling)
    return Matrix(
        cases,
        scaling,
        options,
        results_dir=_folder(values, "results_dir", Path("results")),
        compile_cache=_folder(values, "compile_cache", default_compile_cache()),
    )


def _check_known(name: str, value: str, allowed: Sequence[str], how_many: str = "one") -> None:
    """Refuse a value not in ``allowed``, naming the nearest allowed ones."""
    try:
        known(flag(name), value, allowed, how_many)
    except ValueError as error:
        raise OptionError(str(error)) from None


def _listed(values: Any, name: str, default: Sequence, allowed: Sequence[str] | None = None) -> list:
    """A list option's values, ``default`` where it is not given: names out of ``allowed``, or
    counts >= 1 where ``allowed`` is None. An empty list (an unset shell variable) is refused, not
    read as "the default", and a repeated value, not run twice."""
    given = getattr(values, name)
    if given is None:
        return list(default)
    if allowed is None:
        example = f", e.g. {','.join(map(str, default))}" if default else ""
        expected = f"whole numbers >= 1{example}"
    else:
        expected = f"some of {', '.join(allowed)}"
    if not given:
        raise OptionError(f"{flag(name)} is empty: expected {expected}")
    for i, value in enumerate(given):
        if value in given[:i]:
            raise OptionError(
                f"{flag(name)} {','.join(map(str, given))}: {value} repeats; expected each value once"
            )
        if allowed is not None:
            _check_known(name, value, allowed, "some")
        elif value < 1:
            raise OptionError(f"{flag(name)} {value}: expected {expected}")
    return given


def _positive(values: Any, name: str, default: Any, unit: str) -> Any:
    """A number option's value, ``default`` where it is not given; refused unless above 0 (a whole
    number >= 1 for an integer option). NaN is refused too."""
    value = getattr(values, name)
    if value is None:
        return default
    if isinstance(value, int) and value < 1:
        raise OptionError(f"{flag(name)} {value}: expected a number of {unit} >= 1")
    if not value > 0:
        raise OptionError(f"{flag(name)} {value:g}: expected a number of {unit} > 0")
    return value


def _share(name: str, value: float, low_included: bool, expected: str) -> float:
    """A share option's value, refused outside 0 to 1 (0 allowed where ``low_included``)."""
    if not (0 <= value < 1 if low_included else 0 < value < 1):
        raise OptionError(f"{flag(name)} {value:g}: expected {expected}")
    return value


def _folder(values: Any, name: str, default: Path) -> Path:
    """A folder option's value, ``default`` where it is not given; refused if it could not be
    written into, before anything runs."""
    text = getattr(values, name)
    if text == "":
        raise OptionError(f"{flag(name)} is empty: expected a folder (default {default})")
    try:
        if text is not None:
            return check_folder(text, what=flag(name))
        return check_folder(default, what=f"the default {flag(name)[2:].replace('-', ' ')} folder")
    except ValueError as error:
        fix = "" if text is not None else f"; give {flag(name)} FOLDER"
        raise OptionError(f"{error}{fix}") from None


def _device(values: Any) -> str:
    device = values.device
    if device is None:
        return environment.default_device()
    problem = environment.device_problem(device)
    if problem:
        raise OptionError(f"--device {device}: {problem}")
    return device


def _spec(values: Any) -> UNetSpec:
    _check_known("padding", values.padding, PADDINGS)
    default = DEFAULT_SPECS[values.dims]
    spec = dataclasses.replace(
        default,
        width=_positive(values, "width", default.width, "channels"),
        depth=_positive(values, "depth", default.depth, "poolings"),
        padding=values.padding,
    )
    if spec.smallest_valid_size() is None:  # blamed on --depth, not on every size tried
        raise OptionError(
            f"--depth {spec.depth}: with --padding {spec.padding} no input side below {SEARCH_LIMIT} px is "
            f"valid; expected a depth from 1 to {spec.max_depth()}"
        )
    return spec


def _check_sizes(values: Any, spec: UNetSpec, sizes: list[int]) -> None:
    """Refuse a size the network cannot take, naming the nearest valid sizes and the option at
    fault: --sizes if given, else the --depth or --padding that the default sizes do not fit."""
    for size in sizes:
        try:
            spec.check_side(size)
            _check_instance_norm(spec, size)
        except ValueError as error:
            if values.sizes is not None:
                raise OptionError(f"--sizes {size}: {error}") from None
            changed = " ".join(
                f"{flag(name)} {getattr(spec, name)}"
                for name in ("depth", "padding")
                if getattr(spec, name) != getattr(DEFAULT_SPECS[spec.dims], name)
            )
            raise OptionError(
                f"{changed}: the default sizes {','.join(map(str, sizes))} do not fit it: {error}; "
                "give valid ones with --sizes"
            ) from None


def _check_instance_norm(spec: UNetSpec, size: int) -> None:
    """Refuse an instance-normalised network whose smallest feature map has a side of 2 or less: a
    2x2x2 bottleneck normalises each channel over 8 voxels (1 leaves only the bias), which measures
    a network nobody trains."""

    def smallest_map(side: int) -> int:
        return min(layer.side for layer in spec.conv_layers(side))

    if spec.norm == "instance" and smallest_map(size) <= MIN_INSTANCE_NORM_SIDE:
        takes = size
        while smallest_map(takes) <= MIN_INSTANCE_NORM_SIDE:
            takes = spec.nearest_valid_sizes(takes)[-1]  # the next valid side up
        raise ValueError(
            f"side {size} leaves a {smallest_map(size)}-voxel-wide bottleneck to instance-normalise at depth "
            f"{spec.depth} (more than {MIN_INSTANCE_NORM_SIDE} needed); expected a side of {takes} or more, "
            "or a smaller --depth"
        )


def _calibration(values: Any, paths: list[str]) -> list[str]:
    """The calibration paths of --calibration, each measured against torch-eager (which must run)."""
    percents = values.calibration
    if percents is None:
        return []
    if not percents:
        raise OptionError("--calibration is empty: expected percentages, e.g. 0,5,10,20")
    for i, percent in enumerate(percents):
        if not 0 <= percent <= 100 or percent in percents[:i]:
            raise OptionError(
                f"--calibration {','.join(map(str, percents))}: expected distinct whole percentages "
                "from 0 to 100"
            )
    if CALIBRATION_REFERENCE not in paths:
        raise OptionError(
            f"--calibration: its paths are measured against {CALIBRATION_REFERENCE}; add it to --paths"
        )
    return [calibration_path(percent) for percent in percents]


def _matrix(values: Any, max_time: float | None, min_rounds: int) -> tuple[list[RunConfig], dict]:
    """The cases of the command line, and the options every case shares."""
    spec = _spec(values)
    device = _device(values)
    default = defaults(device, spec.dims)
    paths = _listed(values, "paths", default["paths"], PATHS)
    tasks = _listed(values, "tasks", default["tasks"], TASKS)
    for task, dims in WHOLE_INPUT_TASKS.items():
        if task in tasks and dims != spec.dims:
            raise OptionError(
                f"--tasks {task}: with --dims {spec.dims}, the whole-input task is "
                f"{whole_input_task(spec.dims)}"
            )
    precisions = _listed(values, "precisions", default["precisions"], PRECISIONS)
    sizes = _listed(values, "sizes", default["sizes"])
    batches = _listed(values, "batches", default["batches"])
    problem = paths_problem(paths, device)
    if problem:
        raise OptionError(problem)
    _check_sizes(values, spec, sizes)
    case_timeout = _positive(values, "case_timeout", default["case_timeout"], "seconds")
    target_ci = _share("target_ci", values.target_ci, False, "a share between 0 and 1, e.g. 0.02")
    warm_up = WARM_UP_SECONDS if values.warm_up is None else values.warm_up
    if not 0 <= warm_up < math.inf:
        raise OptionError(f"--warm-up {warm_up:g}: expected a number of seconds >= 0 (0: one block)")
    replicates = _positive(values, "replicates", default["replicates"], "workers")
    max_replicates = _positive(values, "max_replicates", max(replicates, MAX_REPLICATES), "workers")
    if max_replicates < replicates:
        raise OptionError(f"--max-replicates {max_replicates}: expected at least --replicates ({replicates})")
    group_budget = _positive(values, "group_budget", default["group_budget"], "seconds")
    margin = stats.MARGIN if values.margin is None else values.margin
    margin = _share("margin", margin, False, "a share between 0 and 1, e.g. 0.05")
    run_spread = stats.RUN_SPREAD if values.run_spread is None else values.run_spread
    run_spread = _share("run_spread", run_spread, True, "an sd on logs from 0 to 1, e.g. 0.01")
    calibration = _calibration(values, paths)
    max_minutes = _positive(values, "max_minutes", None, "minutes")
    image_size = _positive(values, "image_size", default["image_size"], "pixels")
    shared = {
        "spec": spec,
        "device": device,
        "tf32": values.tf32,
        "upconv": values.upconv,
        "memory_format": values.memory_format,
        "freezing": values.freezing,
        "loss": values.loss,
        "sync_bn": values.sync_bn,
    }
    cases = [
        RunConfig(
            path,
            size=size,
            batch=batch,
            precision=precision,
            task=task,
            image_size=image_size if task in WHOLE_INPUT_TASKS else None,
            **shared,
        )
        for task, precision, size, batch, path in itertools.product(
            tasks, precisions, sizes, batches, paths + calibration
        )
        if task not in WHOLE_INPUT_TASKS or (size, batch) == (max(sizes), max(batches))
    ]
    return cases, {
        **shared,
        "image_size": image_size,
        "case_timeout": case_timeout,
        "target_ci": target_ci,
        "warm_up": warm_up,
        "replicates": replicates,
        "max_replicates": max_replicates,
        "group_budget": group_budget,
        "margin": margin,
        "run_spread": run_spread,
        "calibration": calibration,
        "max_time": float(default["max_time"] if max_time is None else max_time),
        "min_rounds": int(min_rounds),
        "max_minutes": max_minutes,
    }


def _scaling_matrix(values: Any, cases: list[RunConfig]) -> list[RunConfig]:
    """Data-parallel training cases: weak scaling keeps the batch per device, strong the global batch."""
    device = cases[0].device if cases else "cpu"
    if values.dims != 2:  # out of scope: data parallelism over volumes
        if values.devices is not None:
            raise OptionError(f"--devices: data-parallel runs take 2D U-Nets only, not --dims {values.dims}")
        return []
    gpus = 0 if simulated_devices(device) else len(environment.gpus())
    counts = _listed(
        values, "devices", [2**k for k in range(gpus.bit_length()) if 2**k <= gpus] if gpus > 1 else []
    )
    if gpus and max(counts, default=0) > gpus:  # on a CPU, any number of devices is simulated
        raise OptionError(
            f"--devices {max(counts)}: this machine has {gpus} GPU(s); expected counts from 1 to {gpus}"
        )
    modes = _listed(values, "scaling", SCALINGS, SCALINGS)
    paths = [p for p in (values.paths or SCALING_PATHS) if p in SCALING_PATHS]
    sizes = sorted({c.size for c in cases})
    batches = sorted({c.batch for c in cases if c.task == "train"})
    precisions = sorted({c.precision for c in cases})
    scaling = []
    for mode, precision, size, per_device, path, n in itertools.product(
        modes, precisions, sizes, batches, paths, counts
    ):
        global_batch = per_device * (n if mode == "weak" else max(counts))
        if global_batch % n == 0:
            scaling.append(
                cases[0].replace(
                    path=path,
                    task="train",
                    size=size,
                    batch=global_batch,
                    precision=precision,
                    image_size=None,
                    devices=n,
                    scaling=mode,
                )
            )
    return scaling


def _check_memory(cases: list[RunConfig]) -> None:
    """Refuse a matrix with a case the device cannot hold (measure.memory_problem), before any runs:
    the largest one named, with the count of the others."""
    refused = [case for case in cases if memory_problem(case)]
    if refused:
        largest = max(refused, key=needed_bytes)
        others = f" (and {len(refused) - 1} other cases of the {len(cases)})" if len(refused) > 1 else ""
        raise OptionError(
            f"{memory_problem(largest)}{others}: choose smaller --sizes or --batches, or free memory"
        )
