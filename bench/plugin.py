"""The benchmark suite's pytest plugin: command-line axes, the case matrix, saving and the report.

Loaded from the repository's root conftest.py, so that pytest knows the
options before it looks into bench/. It imports no framework: every case runs
in worker processes (bench/workers.py).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import shutil
import signal
from importlib import metadata
from pathlib import Path

import pytest

from bench import environment, report, stats
from bench.measure import Sweep, default_compile_cache
from bench.runners.config import (
    CUDA_ONLY_PATHS,
    LOSSES,
    MEMORY_FORMATS,
    PATHS,
    PRECISIONS,
    SCALINGS,
    TASKS,
    RunConfig,
)
from bench.workers import leftover_processes
from impls.files import write_text
from impls.spec import PADDINGS, UNetSpec

DEFAULT_PATHS = ("torch-eager", "torch-plain", "torch-compile", "jax", "jax-plain")
# The default matrix fits the machine: small images on a CPU, large ones on a GPU.
# bf16 on a CPU (slow under XLA's CPU backend, rare in practice) is asked for with --precisions.
DEFAULTS = {
    "cpu": {
        "tasks": ["train", "infer"],  # tiled when asked for: 3 minutes more, past the 15 the run fits in
        "sizes": [64, 128],
        "batches": [2],
        "precisions": ["fp32"],
        "image_size": 256,
        "paths": list(DEFAULT_PATHS),
        "case_timeout": 900,
        "max_time": 3.0,
        "replicates": 3,
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
    },
}
RUN_DIR_KEY = pytest.StashKey[Path]()
CASES_KEY = pytest.StashKey[list]()
SCALING_KEY = pytest.StashKey[list]()
SCALING_PATHS = ("torch-eager", "torch-compile", "jax")
SWEEP_KEY = pytest.StashKey[Sweep]()
REPORT_KEY = pytest.StashKey[str]()
ENVIRONMENT_KEY = pytest.StashKey[dict]()
OPTIONS_KEY = pytest.StashKey[dict]()
ROOT = Path(__file__).resolve().parent.parent


def _csv(kind=str):
    def parse(text: str) -> list:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]

    return parse


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unet-bench", "unet-bench benchmark axes (comma-separated lists)")
    group.addoption("--paths", type=_csv(), help=f"framework paths, of: {', '.join(PATHS)}")
    group.addoption(
        "--tasks",
        type=_csv(),
        help="train, infer, tiled (a whole image in tiles of the largest size and batch); default: "
        "train,infer on a CPU, all on a GPU",
    )
    group.addoption(
        "--sizes", type=_csv(int), help="input sides in pixels (default: 64,128 on CPU; 256,512,1024 on GPU)"
    )
    group.addoption("--batches", type=_csv(int), help="batch sizes (default: 1,4 on CPU; 1,8,32 on GPU)")
    group.addoption("--precisions", type=_csv(), help="fp32, bf16 (default: fp32 on CPU, both on GPU)")
    group.addoption("--device", help="cpu, cuda or cuda:N (default: cuda if there is one, else cpu)")
    group.addoption("--width", type=int, default=64, help="channels of the first level (default 64)")
    group.addoption("--depth", type=int, default=4, help="number of poolings (default 4)")
    group.addoption("--padding", default="same", help=f"one of {', '.join(PADDINGS)} (default same)")
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
        "--loss",
        default="ce",
        choices=LOSSES,
        help="ce: softmax cross-entropy; weighted: the paper's pixel-weighted one (default ce)",
    )
    group.addoption(
        "--image-size",
        type=int,
        help="side of the tiled task's whole image (default 512 on CPU, 4096 on GPU)",
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
        help="seconds a case may take, all its workers together, before they are killed and the case "
        f"recorded as timeout (default {DEFAULTS['cpu']['case_timeout']} on a CPU, "
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
        "--max-minutes",
        type=float,
        help="start no case after this many minutes; the rest are recorded as skipped (default: no limit)",
    )
    group.addoption(
        "--compile-cache",
        help="folder of the on-disk compile caches, one subfolder per case, kept between runs "
        f"(default {default_compile_cache()}; delete it to start cold)",
    )


def _matrix(config: pytest.Config) -> tuple[list[RunConfig], dict]:
    """The cases of the command line, and the options every case shares."""
    option = config.getoption
    try:
        spec = UNetSpec(width=option("width"), depth=option("depth"), padding=option("padding"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from error
    device = option("device") or environment.default_device()
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise pytest.UsageError(f"--device {device}: expected cpu, cuda or cuda:N")
    defaults = DEFAULTS["cpu" if device == "cpu" else "cuda"]
    paths = option("paths") or defaults["paths"]
    tasks = option("tasks") or defaults["tasks"]
    precisions = option("precisions") or defaults["precisions"]
    sizes = option("sizes") or defaults["sizes"]
    batches = option("batches") or defaults["batches"]
    for name, values, allowed in (
        ("paths", paths, PATHS),
        ("tasks", tasks, TASKS),
        ("precisions", precisions, PRECISIONS),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise pytest.UsageError(f"--{name} {','.join(unknown)}: expected some of {','.join(allowed)}")
    if device == "cpu" and any(p in CUDA_ONLY_PATHS for p in paths):
        raise pytest.UsageError(f"--paths: {', '.join(CUDA_ONLY_PATHS)} need a CUDA device")
    for size in sizes:
        try:
            spec.output_size(size, size)
        except ValueError as error:
            raise pytest.UsageError(f"--sizes {size}: {error}") from error
    case_timeout = option("case_timeout")
    case_timeout = defaults["case_timeout"] if case_timeout is None else case_timeout
    if case_timeout <= 0:
        raise pytest.UsageError(f"--case-timeout {case_timeout:g}: expected a number of seconds > 0")
    target_ci = option("target_ci")
    if not 0 < target_ci < 1:
        raise pytest.UsageError(f"--target-ci {target_ci:g}: expected a share between 0 and 1, e.g. 0.02")
    replicates = defaults["replicates"] if option("replicates") is None else option("replicates")
    if replicates < 1:
        raise pytest.UsageError(f"--replicates {replicates}: expected a number of workers >= 1")
    max_minutes = option("max_minutes")
    if max_minutes is not None and max_minutes <= 0:
        raise pytest.UsageError(f"--max-minutes {max_minutes:g}: expected a number of minutes > 0")
    if "--benchmark-max-time" not in " ".join(config.invocation_params.args):
        config.option.benchmark_max_time = str(defaults["max_time"])
    shared = {
        "spec": spec,
        "device": device,
        "tf32": option("tf32"),
        "upconv": option("upconv"),
        "memory_format": option("memory_format"),
        "loss": option("loss"),
        "sync_bn": option("sync_bn"),
    }
    image_size = option("image_size") or defaults["image_size"]
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
        for task, precision, size, batch, path in itertools.product(tasks, precisions, sizes, batches, paths)
        if task != "tiled" or (size, batch) == (max(sizes), max(batches))
    ]
    return cases, {
        **shared,
        "image_size": image_size,
        "case_timeout": case_timeout,
        "target_ci": target_ci,
        "replicates": replicates,
        "max_time": float(config.option.benchmark_max_time),
        "min_rounds": int(config.getoption("benchmark_min_rounds")),
        "noise_threshold": stats.NOISE_THRESHOLD,
        "max_minutes": max_minutes,
    }


def _scaling_matrix(config: pytest.Config, cases: list[RunConfig]) -> list[RunConfig]:
    """Data-parallel training cases: weak scaling keeps the batch per device, strong the global batch."""
    option = config.getoption
    device = cases[0].device if cases else "cpu"
    counts = option("devices")
    if counts is None:
        gpus = len(environment.gpus()) if device != "cpu" else 0
        counts = [2**k for k in range(gpus.bit_length()) if 2**k <= gpus] if gpus > 1 else []
    modes = option("scaling") or list(SCALINGS)
    unknown = [m for m in modes if m not in SCALINGS]
    if unknown:
        raise pytest.UsageError(f"--scaling {','.join(unknown)}: expected weak and/or strong")
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


def _stop_on_sigterm(signum, frame) -> None:
    # As Ctrl-C: the case in progress is recorded as interrupted, its workers ended,
    # and pytest still writes benchmark.json and the report for what was measured.
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    cases, options = _matrix(config)
    config.stash[CASES_KEY] = cases
    config.stash[OPTIONS_KEY] = options
    config.stash[SCALING_KEY] = _scaling_matrix(config, cases)
    timing = not config.getoption("benchmark_disable")
    # A run is saved by the main command, `pytest --benchmark-only`.
    run_dir = None
    if config.getoption("benchmark_only") and cases and not config.option.collectonly:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        simulated = cases[0].device == "cpu" and any((c.devices or 1) > 1 for c in config.stash[SCALING_KEY])
        run_dir = _new_run_dir(
            Path(config.getoption("results_dir")), cases[0].device, "-simulated-devices" if simulated else ""
        )
        run_dir.mkdir(parents=True)
        config.stash[RUN_DIR_KEY] = run_dir
        if not config.getoption("benchmark_json"):
            config.option.benchmark_json = _json_target(run_dir / "benchmark.json")
        # Read now, so that the run records the code it started with; kept beside progress.jsonl
        # for a report rebuilt after a sweep that was killed outright.
        config.stash[ENVIRONMENT_KEY] = environment.describe(cases[0].device)
        write_text(run_dir / "environment.json", json.dumps(config.stash[ENVIRONMENT_KEY], indent=1))
    compile_cache = config.getoption("compile_cache")
    config.stash[SWEEP_KEY] = Sweep(
        progress_file=run_dir / "progress.jsonl" if run_dir else None,
        compile_cache=Path(compile_cache) if compile_cache else default_compile_cache(),
        case_timeout=options["case_timeout"],
        timing=timing,
        min_rounds=int(config.getoption("benchmark_min_rounds")),
        max_time=float(config.getoption("benchmark_max_time")),
        target_ci=options["target_ci"],
        replicates=options["replicates"] if timing else 1,
        max_minutes=options["max_minutes"],
        cases=cases + config.stash[SCALING_KEY],
        announce=_announcer(config),
    )


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


def _new_run_dir(results: Path, device: str, suffix: str = "") -> Path:
    base = f"{datetime.date.today().isoformat()}-{environment.device_slug(device)}{suffix}"
    for n in itertools.count(1):
        run_dir = results / (base if n == 1 else f"{base}-{n}")
        if not run_dir.exists():
            return run_dir
    raise AssertionError("unreachable")


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
        for case in sorted({(c.device, c.precision, c.tf32 and c.device != "cpu") for c in cases}):
            environment.peak_tflops(*case)
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
