"""The benchmark suite's pytest plugin: command-line axes, the case matrix, saving and the report.

Loaded from the repository's root conftest.py, so that pytest knows the
options before it looks into bench/. It imports no framework: every case runs
in worker processes (bench/workers.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import shutil
import signal
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from bench import environment, report, resume, stats
from bench.runners.config import (
    CALIBRATION_REFERENCE,
    FREEZINGS,
    LOSSES,
    MEMORY_FORMATS,
    PATHS,
    PRECISIONS,
    SCALINGS,
    TASKS,
    RunConfig,
    calibration_path,
    paths_problem,
)
from bench.sweep import Sweep, default_compile_cache, leftover_processes, memory_problem, needed_bytes
from impls.checks import known
from impls.files import check_folder, new_folder, write_text
from impls.spec import PADDINGS, SEARCH_LIMIT, UNetSpec

DEFAULT_SPEC = UNetSpec()  # the network of --width, --depth and --padding's defaults
# The plain references are in no verdict. On a CPU the default run measures jax against jax-plain
# (is the project's JAX at its best?); torch-plain, and on a GPU both, run when asked for with --paths:
# their set-up and rounds would go to time that deciding the verdicts needs more.
DEFAULT_PATHS = ("torch-eager", "torch-compile", "jax")
# The default matrix fits the machine: small images on a CPU, large ones on a GPU.
# bf16 on a CPU (slow under XLA's CPU backend, rare in practice) is asked for with --precisions.
DEFAULTS = {
    "cpu": {
        "tasks": ["train", "infer"],  # tiled when asked for: 3 minutes more, past the 15 the run fits in
        # One size: each group's set-up (torch-compile's two cold compiles, about 2 minutes to train)
        # and a sampling budget that decides its comparisons (docs/verdicts.md) fit 15 minutes twice
        # over, four groups did not. --sizes 64,128 adds a size.
        "sizes": [128],
        "batches": [2],
        "precisions": ["fp32"],
        "image_size": 256,
        "paths": [*DEFAULT_PATHS, "jax-plain"],
        "case_timeout": 900,
        "max_time": 3.0,
        "replicates": 3,
        "group_budget": 240.0,
    },
    # About 52 minutes from cold caches on one H200 (README: each phase measured there, then added
    # up): worker starts and compiles are most of it, so two sizes, one batch, and the default
    # compile mode only (max-autotune and reduce-overhead when asked for with --paths).
    "cuda": {
        "tasks": list(TASKS),
        "sizes": [256, 1024],
        "batches": [8],
        "precisions": list(PRECISIONS),
        "image_size": 4096,
        "paths": list(DEFAULT_PATHS),
        "case_timeout": 1800,
        "max_time": 2.0,
        "replicates": 3,
        "group_budget": 60.0,
    },
}
MAX_REPLICATES = 12  # workers per case at most, while a comparison is undecided and the budget allows
RUN_DIR_KEY = pytest.StashKey[Path]()
CASES_KEY = pytest.StashKey[list]()
SCALING_KEY = pytest.StashKey[list]()
SCALING_PATHS = ("torch-eager", "torch-compile", "jax")
SWEEP_KEY = pytest.StashKey[Sweep]()
REPORT_KEY = pytest.StashKey[str]()
ENVIRONMENT_KEY = pytest.StashKey[dict]()
OPTIONS_KEY = pytest.StashKey[dict]()
RESUMED_KEY = pytest.StashKey[tuple]()  # the earlier sessions' (benchmarks, failures) of a resumed run
ROOT = Path(__file__).resolve().parent.parent


def _csv(kind: type = str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:  # only whole numbers can be malformed
            raise argparse.ArgumentTypeError(f"{text}: expected comma-separated whole numbers") from None

    return parse


def _defaults(name: str) -> str:
    """An axis's defaults as the help shows them: "64,128 on a CPU, 256,1024 on a GPU"."""

    def shown(value) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    return f"{shown(DEFAULTS['cpu'][name])} on a CPU, {shown(DEFAULTS['cuda'][name])} on a GPU"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unet-bench", "unet-bench benchmark axes (comma-separated lists)")
    group.addoption("--paths", type=_csv(), help=f"framework paths, of: {', '.join(PATHS)}")
    group.addoption(
        "--tasks",
        type=_csv(),
        help="train, infer, tiled (a whole image in tiles of the largest size and batch); default: "
        "train,infer on a CPU, all on a GPU",
    )
    group.addoption("--sizes", type=_csv(int), help=f"input sides in pixels (default: {_defaults('sizes')})")
    group.addoption("--batches", type=_csv(int), help=f"batch sizes (default: {_defaults('batches')})")
    group.addoption("--precisions", type=_csv(), help="fp32, bf16 (default: fp32 on CPU, both on GPU)")
    group.addoption("--device", help="cpu, cuda or cuda:N (default: cuda if there is one, else cpu)")
    group.addoption(
        "--width",
        type=int,
        default=DEFAULT_SPEC.width,
        help=f"channels of the first level (default {DEFAULT_SPEC.width})",
    )
    group.addoption(
        "--depth",
        type=int,
        default=DEFAULT_SPEC.depth,
        help=f"number of poolings (default {DEFAULT_SPEC.depth})",
    )
    group.addoption(
        "--padding",
        default=DEFAULT_SPEC.padding,
        help=f"one of {', '.join(PADDINGS)} (default {DEFAULT_SPEC.padding})",
    )
    group.addoption("--tf32", action="store_true", help="let fp32 convs use TF32 on CUDA, in every framework")
    group.addoption(
        "--upconv",
        default="auto",
        choices=("auto", "native", "matmul"),
        help="form of the transposed convs (default auto: the faster, measured per device)",
    )
    group.addoption(
        "--memory-format",
        default="auto",
        choices=MEMORY_FORMATS,
        help="torch's memory format (default auto: the faster for the case's task, measured per device)",
    )
    group.addoption(
        "--freezing",
        default="auto",
        choices=FREEZINGS,
        help="inductor's freezing for torch-compile inference on a CPU (default auto: the faster, "
        "measured compiled)",
    )
    group.addoption(
        "--loss",
        default="ce",
        choices=LOSSES,
        help="ce: softmax cross-entropy; weighted: the paper's pixel-weighted one (default ce)",
    )
    group.addoption(
        "--image-size",
        type=int,
        help=f"side of the tiled task's whole image (default: {_defaults('image_size')})",
    )
    group.addoption(
        "--devices",
        type=_csv(int),
        help="data-parallel device counts for bench/test_scaling.py, e.g. 1,2,4,8 (default: 1 to every GPU; "
        "on a CPU none: pass them to simulate devices)",
    )
    group.addoption("--scaling", type=_csv(), help="weak, strong (default both)")
    group.addoption("--sync-bn", action="store_true", help="data-parallel BatchNorm over the global batch")
    group.addoption(
        "--results-dir", default="results", help="where timed runs are written (default results/)"
    )
    group.addoption(
        "--case-timeout",
        type=float,
        help="seconds a case may take, all its phases and all its workers together (not the other paths' "
        "rounds interleaved with its own), before its worker is killed and the case recorded as timeout "
        f"(default {DEFAULTS['cpu']['case_timeout']} on a CPU, "
        f"{DEFAULTS['cuda']['case_timeout']} on a GPU: several times the slowest healthy default case)",
    )
    group.addoption(
        "--target-ci",
        type=float,
        default=0.02,
        help="rounds are added until each case's median has a 95%% interval within this share of it "
        "(default 0.02: +-2%%), up to --benchmark-max-time of rounds per case (default here: "
        f"{DEFAULTS['cpu']['max_time']:g} s on a CPU, {DEFAULTS['cuda']['max_time']:g} s on a GPU)",
    )
    group.addoption(
        "--replicates",
        type=int,
        help="fresh worker processes per case, one after another, sharing its rounds (default 3): "
        "the intervals then cover each process's own luck, which moved a case by up to 7%% "
        "between runs",
    )
    group.addoption(
        "--max-replicates",
        type=int,
        help="the most worker processes per case while a comparison is undecided (default 12)",
    )
    group.addoption(
        "--group-budget",
        type=float,
        help="seconds of sampling per group after its set-up (rounds and fresh workers): replicates "
        "are added past --replicates while a comparison is inconclusive and the next fits "
        f"(default {DEFAULTS['cpu']['group_budget']:g} on a CPU, "
        f"{DEFAULTS['cuda']['group_budget']:g} on a GPU)",
    )
    group.addoption(
        "--margin",
        type=float,
        help="practical margin: a speed-up within it either way is equivalent "
        f"(default {stats.MARGIN:g}: 5%%)",
    )
    group.addoption(
        "--run-spread",
        type=float,
        help=f"run-to-run sd of a log speed-up added to every interval (default {stats.RUN_SPREAD:g}, "
        "from calibration: README, 'Calibration')",
    )
    group.addoption(
        "--calibration",
        type=_csv(int),
        help="add paths torch-eager+N%% for each N (e.g. 0,5,10,20): torch eager plus N%% more of the same "
        "work, to measure how often the rule calls known effects",
    )
    group.addoption(
        "--max-minutes",
        type=float,
        help="start no case after this many minutes; the rest are recorded as skipped (default: no limit)",
    )
    group.addoption(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR, a run stopped early (--max-minutes, Ctrl-C, a lost machine): measure "
        "the cases it has no record of into it, reported as one run; refused unless it was measured "
        "with this engine, these versions and this device",
    )
    group.addoption(
        "--compile-cache",
        help="folder of the on-disk compile caches, one subfolder per case, kept between runs "
        f"(default {default_compile_cache()}; delete it to start cold)",
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_known(name: str, value: str, allowed: Sequence[str], how_many: str = "one") -> None:
    """A usage error for a value not in ``allowed``, naming the nearest allowed ones."""
    try:
        known(_flag(name), value, allowed, how_many)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def _listed(
    config: pytest.Config, name: str, default: Sequence, allowed: Sequence[str] | None = None
) -> list:
    """A list option's values, ``default`` where it is not given: names out of ``allowed``, or
    counts >= 1 where ``allowed`` is None. An empty list (an unset shell variable) is refused, not
    read as "the default", and a repeated value, not run twice."""
    values = config.getoption(name)
    if values is None:
        return list(default)
    flag = _flag(name)
    if allowed is None:
        example = f", e.g. {','.join(map(str, default))}" if default else ""
        expected = f"whole numbers >= 1{example}"
    else:
        expected = f"some of {', '.join(allowed)}"
    if not values:
        raise pytest.UsageError(f"{flag} is empty: expected {expected}")
    for i, value in enumerate(values):
        if value in values[:i]:
            raise pytest.UsageError(
                f"{flag} {','.join(map(str, values))}: {value} repeats; expected each value once"
            )
        if allowed is not None:
            _check_known(name, value, allowed, "some")
        elif value < 1:
            raise pytest.UsageError(f"{flag} {value}: expected {expected}")
    return values


def _positive(config: pytest.Config, name: str, default: Any, unit: str) -> Any:
    """A number option's value, ``default`` where it is not given; refused unless above 0 (a whole
    number >= 1 for an integer option). NaN is refused too."""
    value = config.getoption(name)
    if value is None:
        return default
    if isinstance(value, int) and value < 1:
        raise pytest.UsageError(f"{_flag(name)} {value}: expected a number of {unit} >= 1")
    if not value > 0:
        raise pytest.UsageError(f"{_flag(name)} {value:g}: expected a number of {unit} > 0")
    return value


def _folder(config: pytest.Config, name: str, default: Path) -> Path:
    """A folder option's value, ``default`` where it is not given; refused if it could not be
    written into, before anything runs."""
    text = config.getoption(name)
    if text == "":
        raise pytest.UsageError(f"{_flag(name)} is empty: expected a folder (default {default})")
    try:
        if text is not None:
            return check_folder(text, what=_flag(name))
        return check_folder(default, what=f"the default {_flag(name)[2:].replace('-', ' ')} folder")
    except ValueError as error:
        fix = "" if text is not None else f"; give {_flag(name)} FOLDER"
        raise pytest.UsageError(f"{error}{fix}") from None


def _device(config: pytest.Config) -> str:
    device = config.getoption("device")
    if device is None:
        return environment.default_device()
    problem = environment.device_problem(device)
    if problem:
        raise pytest.UsageError(f"--device {device}: {problem}")
    return device


def _spec(config: pytest.Config) -> UNetSpec:
    padding = config.getoption("padding")
    _check_known("padding", padding, PADDINGS)
    spec = UNetSpec(
        width=_positive(config, "width", DEFAULT_SPEC.width, "channels"),
        depth=_positive(config, "depth", DEFAULT_SPEC.depth, "poolings"),
        padding=padding,
    )
    if spec.smallest_valid_size() is None:  # blamed on --depth, not on every size tried
        raise pytest.UsageError(
            f"--depth {spec.depth}: with --padding {padding} no input side below {SEARCH_LIMIT} px is "
            f"valid; expected a depth from 1 to {spec.max_depth()}"
        )
    return spec


def _check_sizes(config: pytest.Config, spec: UNetSpec, sizes: list[int]) -> None:
    """A usage error for a size the network cannot take, naming the nearest valid sizes and the option
    at fault: --sizes if given, else the --depth or --padding that the default sizes do not fit."""
    for size in sizes:
        try:
            spec.check_side(size)
        except ValueError as error:
            if config.getoption("sizes") is not None:
                raise pytest.UsageError(f"--sizes {size}: {error}") from None
            changed = " ".join(
                f"{_flag(name)} {getattr(spec, name)}"
                for name in ("depth", "padding")
                if getattr(spec, name) != getattr(DEFAULT_SPEC, name)
            )
            raise pytest.UsageError(
                f"{changed}: the default sizes {','.join(map(str, sizes))} do not fit it: {error}; "
                "give valid ones with --sizes"
            ) from None


def _calibration(config: pytest.Config, paths: list[str]) -> list[str]:
    """The calibration paths of --calibration, each measured against torch-eager (which must run)."""
    percents = config.getoption("calibration")
    if percents is None:
        return []
    if not percents:
        raise pytest.UsageError("--calibration is empty: expected percentages, e.g. 0,5,10,20")
    for i, percent in enumerate(percents):
        if not 0 <= percent <= 100 or percent in percents[:i]:
            raise pytest.UsageError(
                f"--calibration {','.join(map(str, percents))}: expected distinct whole percentages "
                "from 0 to 100"
            )
    if CALIBRATION_REFERENCE not in paths:
        raise pytest.UsageError(
            f"--calibration: its paths are measured against {CALIBRATION_REFERENCE}; add it to --paths"
        )
    return [calibration_path(percent) for percent in percents]


def _matrix(config: pytest.Config) -> tuple[list[RunConfig], dict]:
    """The cases of the command line, and the options every case shares."""
    option = config.getoption
    spec = _spec(config)
    device = _device(config)
    defaults = DEFAULTS["cpu" if device == "cpu" else "cuda"]
    paths = _listed(config, "paths", defaults["paths"], PATHS)
    tasks = _listed(config, "tasks", defaults["tasks"], TASKS)
    precisions = _listed(config, "precisions", defaults["precisions"], PRECISIONS)
    sizes = _listed(config, "sizes", defaults["sizes"])
    batches = _listed(config, "batches", defaults["batches"])
    problem = paths_problem(paths, device)
    if problem:
        raise pytest.UsageError(problem)
    _check_sizes(config, spec, sizes)
    case_timeout = _positive(config, "case_timeout", defaults["case_timeout"], "seconds")
    target_ci = option("target_ci")
    if not 0 < target_ci < 1:
        raise pytest.UsageError(f"--target-ci {target_ci:g}: expected a share between 0 and 1, e.g. 0.02")
    replicates = _positive(config, "replicates", defaults["replicates"], "workers")
    max_replicates = _positive(config, "max_replicates", max(replicates, MAX_REPLICATES), "workers")
    if max_replicates < replicates:
        raise pytest.UsageError(
            f"--max-replicates {max_replicates}: expected at least --replicates ({replicates})"
        )
    group_budget = _positive(config, "group_budget", defaults["group_budget"], "seconds")
    margin = option("margin")
    margin = stats.MARGIN if margin is None else margin
    if not 0 < margin < 1:
        raise pytest.UsageError(f"--margin {margin:g}: expected a share between 0 and 1, e.g. 0.05")
    run_spread = option("run_spread")
    run_spread = stats.RUN_SPREAD if run_spread is None else run_spread
    if not 0 <= run_spread < 1:
        raise pytest.UsageError(f"--run-spread {run_spread:g}: expected an sd on logs from 0 to 1, e.g. 0.01")
    calibration = _calibration(config, paths)
    max_minutes = _positive(config, "max_minutes", None, "minutes")
    image_size = _positive(config, "image_size", defaults["image_size"], "pixels")
    if "--benchmark-max-time" not in " ".join(config.invocation_params.args):
        config.option.benchmark_max_time = str(defaults["max_time"])
    shared = {
        "spec": spec,
        "device": device,
        "tf32": option("tf32"),
        "upconv": option("upconv"),
        "memory_format": option("memory_format"),
        "freezing": option("freezing"),
        "loss": option("loss"),
        "sync_bn": option("sync_bn"),
    }
    cases = [
        RunConfig(
            path,
            size=size,
            batch=batch,
            precision=precision,
            task=task,
            image_size=image_size if task == "tiled" else None,
            **shared,
        )
        for task, precision, size, batch, path in itertools.product(
            tasks, precisions, sizes, batches, paths + calibration
        )
        if task != "tiled" or (size, batch) == (max(sizes), max(batches))
    ]
    return cases, {
        **shared,
        "image_size": image_size,
        "case_timeout": case_timeout,
        "target_ci": target_ci,
        "replicates": replicates,
        "max_replicates": max_replicates,
        "group_budget": group_budget,
        "margin": margin,
        "run_spread": run_spread,
        "calibration": calibration,
        "max_time": float(config.option.benchmark_max_time),
        "min_rounds": int(config.getoption("benchmark_min_rounds")),
        "max_minutes": max_minutes,
    }


def _scaling_matrix(config: pytest.Config, cases: list[RunConfig]) -> list[RunConfig]:
    """Data-parallel training cases: weak scaling keeps the batch per device, strong the global batch."""
    option = config.getoption
    device = cases[0].device if cases else "cpu"
    gpus = len(environment.gpus()) if device != "cpu" else 0
    counts = _listed(
        config, "devices", [2**k for k in range(gpus.bit_length()) if 2**k <= gpus] if gpus > 1 else []
    )
    if gpus and max(counts, default=0) > gpus:  # on a CPU, any number of devices is simulated
        raise pytest.UsageError(
            f"--devices {max(counts)}: this machine has {gpus} GPU(s); expected counts from 1 to {gpus}"
        )
    modes = _listed(config, "scaling", SCALINGS, SCALINGS)
    paths = [p for p in (option("paths") or SCALING_PATHS) if p in SCALING_PATHS]
    sizes = sorted({c.size for c in cases})
    batches = sorted({c.batch for c in cases if c.task == "train"})
    precisions = sorted({c.precision for c in cases})
    scaling = []
    for mode, precision, size, per_device, path, n in itertools.product(
        modes, precisions, sizes, batches, paths, counts
    ):
        global_batch = per_device * (n if mode == "weak" else max(counts))
        if global_batch % n == 0:
            base = cases[0]
            scaling.append(
                base.replace(
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
        raise pytest.UsageError(
            f"{memory_problem(largest)}{others}: choose smaller --sizes or --batches, or free memory"
        )


def _stop_on_sigterm(signum, frame) -> None:
    # As Ctrl-C: the case in progress is recorded as interrupted, its workers ended,
    # and pytest still writes benchmark.json and the report for what was measured.
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_report_header(config: pytest.Config) -> str | None:
    problem = config.stash.get(ENVIRONMENT_KEY, {}).get("torch_facts_problem")
    return f"the thread count and CUDA versions are not recorded: {problem}" if problem else None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Every option is checked here, before anything runs: a mistake is one line, not a traceback.
    cases, options = _matrix(config)
    config.stash[CASES_KEY] = cases
    config.stash[OPTIONS_KEY] = options
    config.stash[SCALING_KEY] = _scaling_matrix(config, cases)
    _check_memory(cases + config.stash[SCALING_KEY])
    results_dir = _folder(config, "results_dir", Path("results"))
    compile_cache = _folder(config, "compile_cache", default_compile_cache())
    timing = not config.getoption("benchmark_disable")
    # A run is saved by the main command, `pytest --benchmark-only`.
    run_dir = None
    if config.getoption("resume") is not None and not config.getoption("benchmark_only"):
        raise pytest.UsageError("--resume continues a measured run: use it with --benchmark-only")
    if config.getoption("benchmark_only") and cases and not config.option.collectonly:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        # Read now, so that the run records the code it started with; kept beside progress.jsonl
        # for a report rebuilt after a sweep that was killed outright.
        config.stash[ENVIRONMENT_KEY] = environment.describe(cases[0].device)
        if config.getoption("resume") is not None:
            run_dir = _resumed_run_dir(config)
            cases = config.stash[CASES_KEY]
        else:
            simulated = cases[0].device == "cpu" and any(
                (c.devices or 1) > 1 for c in config.stash[SCALING_KEY]
            )
            slug = environment.device_slug(cases[0].device) + ("-simulated-devices" if simulated else "")
            run_dir = new_folder(results_dir, f"{datetime.date.today().isoformat()}-{slug}")
            run_dir.mkdir(parents=True)
            write_text(run_dir / "environment.json", json.dumps(config.stash[ENVIRONMENT_KEY], indent=1))
        config.stash[RUN_DIR_KEY] = run_dir
        if not config.getoption("benchmark_json"):
            config.option.benchmark_json = _json_target(run_dir / "benchmark.json")
    config.stash[SWEEP_KEY] = Sweep(
        progress_file=run_dir / "progress.jsonl" if run_dir else None,
        compile_cache=compile_cache,
        case_timeout=options["case_timeout"],
        timing=timing,
        min_rounds=int(config.getoption("benchmark_min_rounds")),
        max_time=float(config.getoption("benchmark_max_time")),
        target_ci=options["target_ci"],
        replicates=options["replicates"] if timing else 1,
        max_replicates=options["max_replicates"],
        group_budget=options["group_budget"],
        margin=options["margin"],
        run_spread=options["run_spread"],
        max_minutes=options["max_minutes"],
        cases=cases + config.stash[SCALING_KEY],
        announce=_announcer(config),
    )


def _resumed_run_dir(config: pytest.Config) -> Path:
    """The run folder --resume names, checked; the matrix (and the scaling one) left with the cases
    it holds no record of, and the earlier sessions' records kept for the run's benchmark.json."""
    run_dir = Path(config.getoption("resume"))
    try:
        resume.check(run_dir, config.stash[ENVIRONMENT_KEY])
        benchmarks, failures = resume.recorded(run_dir)
    except (ValueError, report.UnreadableRun) as error:
        raise pytest.UsageError(str(error)) from None
    done = {resume.case_id(record) for record in benchmarks + failures}
    for key in (CASES_KEY, SCALING_KEY):
        config.stash[key] = [case for case in config.stash[key] if case.id not in done]
    config.stash[RESUMED_KEY] = (benchmarks, failures)
    # Superseded by the one this session writes (the earlier cases in it); until then the report
    # reads progress.jsonl, which holds every session's records.
    earlier = run_dir / "benchmark.json"
    if earlier.exists():
        kept = (run_dir / f"benchmark-session-{n}.json" for n in itertools.count(1))
        earlier.rename(next(file for file in kept if not file.exists()))
    return run_dir


def _announcer(config: pytest.Config):
    """Progress lines written to the terminal at once, past pytest's output capture."""

    def announce(line: str) -> None:
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if terminal is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            terminal.write_line(f"unet-bench {line}")

    return announce


def _json_target(file: Path):
    """What pytest-benchmark's --benchmark-json holds: a path from 5.3, an open file before."""
    version = tuple(int(part) for part in metadata.version("pytest-benchmark").split(".")[:2])
    return file if version >= (5, 3) else file.open("wb")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The main command measures: it skips collecting the unit tests (which import both frameworks)."""
    tests = ROOT / "tests"
    if config.getoption("benchmark_only") and (collection_path == tests or tests in collection_path.parents):
        return True
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, key in (("case", CASES_KEY), ("scaling_case", SCALING_KEY)):
        if name in metafunc.fixturenames:
            cases = metafunc.config.stash[key]
            metafunc.parametrize(name, cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def sweep(request: pytest.FixtureRequest) -> Sweep:
    sweep = request.config.stash[SWEEP_KEY]
    if sweep.timing:
        # The device's peak, measured before any case runs: nothing else is busy yet.
        cases = request.config.stash[CASES_KEY] + request.config.stash[SCALING_KEY]
        for case in {(c.device, c.precision, c.tf32): c for c in cases}.values():
            sweep.peak_tflops(case)
        seconds, guessed = sweep.remaining()
        basis = f"{guessed} of them never run here, guessed" if guessed else "from earlier runs"
        sweep.announce(f"{len(sweep.cases)} cases, about {seconds / 60:.0f} min ({basis})")
    return sweep


@pytest.fixture(scope="session")
def bench_cases(request: pytest.FixtureRequest) -> list[RunConfig]:
    return request.config.stash[CASES_KEY]


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    sweep = config.stash[SWEEP_KEY]
    options = config.stash[OPTIONS_KEY]
    output_json["unet_bench"] = {
        "spec": options["spec"].__dict__,
        "environment": config.stash.get(ENVIRONMENT_KEY, None)
        or environment.describe(config.stash[CASES_KEY][0].device),
        "options": {
            **{k: v for k, v in options.items() if k != "spec"},
            "compile_cache": str(sweep.compile_cache),
        },
        "failures": [r for r in sweep.records if r.get("status") != "ok"],
    }
    if RESUMED_KEY in config.stash:  # one run: the earlier sessions' cases too
        benchmarks, failures = config.stash[RESUMED_KEY]
        output_json["benchmarks"] = benchmarks + output_json["benchmarks"]
        output_json["unet_bench"]["failures"] = failures + output_json["unet_bench"]["failures"]


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    leftovers = leftover_processes()
    if leftovers:  # a bug: every worker is ended with its case
        for process in leftovers:
            process.kill()
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        config.stash[REPORT_KEY] = (
            f"ERROR: {len(leftovers)} worker processes outlived their cases and were killed: "
            + ", ".join(str(p.pid) for p in leftovers)
        )
    run_dir = config.stash.get(RUN_DIR_KEY, None)
    if run_dir is None:
        return
    if RESUMED_KEY in config.stash and not config.stash[CASES_KEY] + config.stash[SCALING_KEY]:
        session.exitstatus = pytest.ExitCode.OK  # not "no tests collected": the run is complete
        config.stash[REPORT_KEY] = f"nothing left to measure in {run_dir}: its report is rebuilt"
    if not report.is_run(run_dir):
        shutil.rmtree(run_dir)  # nothing was measured
        return
    try:
        text = report.write_run(run_dir)
    except report.UnreadableRun as error:  # its own record (a broken sibling is only named in the index)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        text = f"ERROR: no report: {error}"
    config.stash[REPORT_KEY] = text + "\n" + config.stash.get(REPORT_KEY, "")


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    text = config.stash.get(REPORT_KEY, None)
    if text:
        terminalreporter.write_sep("=", "unet-bench comparison")
        terminalreporter.write_line(text)
