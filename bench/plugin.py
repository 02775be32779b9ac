"""The benchmark suite's pytest plugin: command-line axes, the case matrix, saving and the report.

Loaded from the repository's root conftest.py, so that pytest knows the
options before it looks into bench/. It imports no framework itself.
"""

from __future__ import annotations

import datetime
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from bench import environment, report
from bench.measure import TASKS, Case, Session
from bench.runners import CUDA_ONLY_PATHS, LOSSES, PATHS, PRECISIONS
from impls.spec import PADDINGS, UNetSpec

# The default matrix fits the machine: small images on a CPU, large ones on a GPU.
# On a 2-core CPU the default run takes about 12 minutes; bf16 there (slow under
# XLA's CPU backend, rare in practice) would add about 8: ask for it with --precisions.
DEFAULTS = {
    "cpu": {
        "sizes": [64, 128],
        "batches": [1, 4],
        "precisions": ["fp32"],
        "image_size": 512,
        "paths": ["torch-eager", "torch-compile", "jax"],
    },
    "cuda": {
        "sizes": [256, 512, 1024],
        "batches": [1, 8, 32],
        "precisions": list(PRECISIONS),
        "image_size": 4096,
        "paths": list(PATHS),
    },
}
RUN_DIR_KEY = pytest.StashKey[Path]()
CASES_KEY = pytest.StashKey[list]()
SCALING_KEY = pytest.StashKey[list]()
SCALING_PATHS = ("torch-eager", "torch-compile", "jax")
SESSION_KEY = pytest.StashKey[Session]()
REPORT_KEY = pytest.StashKey[str]()
ENVIRONMENT_KEY = pytest.StashKey[dict]()


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
        help="train, infer, tiled (a whole image in tiles of the largest size and batch); default: all",
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


def _matrix(config: pytest.Config) -> tuple[UNetSpec, list[Case]]:
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
    tasks = option("tasks") or list(TASKS)
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
    cases = [
        Case(path, task, size, batch, precision, device)
        for task, precision, size, batch, path in itertools.product(tasks, precisions, sizes, batches, paths)
        if task != "tiled" or (size, batch) == (max(sizes), max(batches))
    ]
    return spec, cases, option("image_size") or defaults["image_size"]


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _scaling_matrix(config: pytest.Config, cases: list[Case]) -> list[Case]:
    """Data-parallel training cases: weak scaling keeps the batch per device, strong the global batch."""
    option = config.getoption
    device = cases[0].device if cases else "cpu"
    counts = option("devices")
    if counts is None:
        gpus = _gpu_count() if device != "cpu" else 0
        counts = [2**k for k in range(gpus.bit_length()) if 2**k <= gpus] if gpus > 1 else []
    modes = option("scaling") or ["weak", "strong"]
    unknown = [m for m in modes if m not in ("weak", "strong")]
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
            scaling.append(
                Case(path, "train", size, global_batch, precision, device, devices=n, scaling=mode)
            )
    return scaling


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Fair memory figures on a GPU: XLA must not grab most of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Empty compile caches, so that each case's first compile is a cold one and
    # its second a start from the caches, as a second run would find them.
    cache = Path(tempfile.mkdtemp(prefix="unet-bench-compile-cache-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache / "jax")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))

    spec, cases, image_size = _matrix(config)
    config.stash[CASES_KEY] = cases
    config.stash[SCALING_KEY] = _scaling_matrix(config, cases)
    # A run is saved by the main command, `pytest --benchmark-only`.
    run_dir = None
    if config.getoption("benchmark_only") and cases:
        simulated = cases[0].device == "cpu" and any((c.devices or 1) > 1 for c in config.stash[SCALING_KEY])
        run_dir = _new_run_dir(
            Path(config.getoption("results_dir")), cases[0].device, "-simulated-devices" if simulated else ""
        )
        run_dir.mkdir(parents=True)
        config.stash[RUN_DIR_KEY] = run_dir
        if not config.getoption("benchmark_json"):
            config.option.benchmark_json = run_dir / "benchmark.json"
        # Read now, so that the run records the code it started with.
        config.stash[ENVIRONMENT_KEY] = environment.describe(cases[0].device)
    config.stash[SESSION_KEY] = Session(
        spec,
        tf32=config.getoption("tf32"),
        upconv=config.getoption("upconv"),
        loss=config.getoption("loss"),
        image_size=image_size,
        sync_bn=config.getoption("sync_bn"),
        progress=run_dir / "progress.jsonl" if run_dir else None,
        min_rounds=int(config.getoption("benchmark_min_rounds")),
        max_time=float(config.getoption("benchmark_max_time")),
    )


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
def bench_session(request: pytest.FixtureRequest) -> Session:
    session = request.config.stash[SESSION_KEY]
    if request.config.getoption("benchmark_only") or not request.config.getoption("benchmark_disable"):
        # The device's peak, measured before any case runs: nothing else is busy yet.
        cases = request.config.stash[CASES_KEY] + request.config.stash[SCALING_KEY]
        for device, precision in sorted({(c.device, c.precision) for c in cases}):
            environment.peak_tflops(device, precision, session.tf32 and device != "cpu")
    return session


@pytest.fixture(scope="session")
def bench_cases(request: pytest.FixtureRequest) -> list[Case]:
    return request.config.stash[CASES_KEY]


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    session = config.stash[SESSION_KEY]
    output_json["unet_bench"] = {
        "spec": session.spec.__dict__,
        "environment": config.stash.get(ENVIRONMENT_KEY, None)
        or environment.describe(config.stash[CASES_KEY][0].device),
        "options": {
            "tf32": session.tf32,
            "upconv": session.upconv,
            "loss": session.loss,
            "image_size": session.image_size,
        },
        "failures": [r for r in session.records if r.get("status") != "ok"],
    }


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    run_dir = config.stash.get(RUN_DIR_KEY, None)
    if run_dir is None:
        return
    if not any(run_dir.iterdir()):  # nothing was measured
        run_dir.rmdir()
        return
    if not (run_dir / "benchmark.json").exists():
        return
    config.stash[REPORT_KEY] = report.write_run(run_dir)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    text = config.stash.get(REPORT_KEY, None)
    if text:
        terminalreporter.write_sep("=", "unet-bench comparison")
        terminalreporter.write_line(text)
