"""What a run was measured on: versions, hardware, settings; and the device's peak.

The sweep's process imports no framework: what only torch can say (is there a
GPU, its name, CUDA and cuDNN versions, the device's measured peak) is asked
of ``python -m bench.environment`` in a process of its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from impls import footprint

PACKAGES = (
    "torch",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "pandas",
    "pytest-benchmark",
    "safetensors",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    # the inference runtimes and exporters (bench/runners/runtime_runner.py), where installed
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "torch-tensorrt",
    "tensorrt",
)
ENV_FLAGS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
# glibc's malloc with fixed thresholds, in every worker of every framework (bench/workers.py). By
# default glibc maps each allocation above a threshold that it raises as the process frees memory, and
# hands the heap's top back to the system, so a large activation is faulted in afresh at each step, by
# a history that differs from process to process. Measured here (docs/verdicts.md, "Intervals over
# the levels that vary"): with these the workers' A/A spread fell by half or more and every path ran
# faster. A value the user's environment already sets is kept.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
PROBE_TIMEOUT = 600.0
ROOT = Path(__file__).resolve().parent.parent


class ProbeError(RuntimeError):
    """``python -m bench.environment`` failed."""


def probe(*args: str) -> dict:
    """Run ``python -m bench.environment ARGS`` in its own process; its JSON answer."""
    command = [sys.executable, "-m", "bench.environment", *args]
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as error:
        raise ProbeError(f"{' '.join(command[1:])} did not answer within {PROBE_TIMEOUT:.0f} s") from error
    lines = done.stdout.splitlines()
    if done.returncode or not lines:
        code = done.returncode
        why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        why = why if code else "printed no answer"
        last = next((line.strip() for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        raise ProbeError(f"{' '.join(command[1:])} failed ({why}){': ' + last if last else ''}")
    return json.loads(lines[-1])


@functools.cache
def _gpus() -> dict:
    # torch (seconds to import) is asked only where NVIDIA device files exist
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return {"gpus": [], "memory": []}
    return probe("gpus")


def gpus() -> tuple[str, ...]:
    """The CUDA devices torch sees, by name."""
    return tuple(_gpus()["gpus"])


def devices() -> tuple[str, ...]:
    """The devices a run may name here: cpu, then cuda:N for each GPU."""
    return ("cpu", *(f"cuda:{i}" for i in range(len(gpus()))))


def memory_bytes(device: str) -> int:
    """What a device can hold: a GPU's total memory, or the memory a CPU has available now (the
    cgroup's limit included)."""
    if device == "cpu":
        return footprint.available_bytes()
    return _gpus()["memory"][int(device.partition(":")[2] or 0)]


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used here, naming the devices there are; None where it can."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        return "expected cpu, cuda or cuda:N"
    here = devices()
    if device in here or (device == "cuda" and len(here) > 1):
        return None
    problem = "no CUDA device on this machine" if len(here) == 1 else "no such device"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    told = f" (CUDA_VISIBLE_DEVICES={hidden} hides the others)" if hidden is not None else ""
    return f"{problem}; devices here: {', '.join(here)}{told}"


def jax_platform_problem(device: str) -> str | None:
    """Why JAX, told by JAX_PLATFORMS which platforms it may use, could not run on ``device``; None
    where it can (or where JAX_PLATFORMS is not set)."""
    told = os.environ.get("JAX_PLATFORMS", "")
    platforms = {name.strip() for name in told.split(",") if name.strip()}
    needed = {"cpu"} if device == "cpu" else {"cuda", "gpu"}
    if not platforms or platforms & needed:
        return None
    name = "cpu" if device == "cpu" else "cuda"
    return (
        f"JAX_PLATFORMS={told} leaves out {name}, the run's device ({device}): unset it, or set "
        f"JAX_PLATFORMS={name}"
    )


def default_device() -> str:
    """cuda if torch sees a GPU, else cpu."""
    return "cuda" if gpus() else "cpu"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cpu":
        return f"{cpu_name()} ({os.cpu_count()} cores)"
    index = int(device.partition(":")[2] or 0)
    return gpus()[index]


def device_slug(device: str) -> str:
    """A folder-friendly name: 'amd-epyc-2-cores', 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


@functools.cache  # asked for by every case's cache keys: the packages do not change in a run
def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


@functools.cache  # likewise: the code a run started with
def code_hash() -> str:
    """A hash of the code that builds and runs a model and makes its data: part of a cache's key."""
    return _files_hash([*ROOT.glob("impls/*.py"), *ROOT.glob("bench/runners/*.py"), ROOT / "bench/cells.py"])


@functools.cache
def engine_hash() -> str:
    """A hash of all the code that makes a run's numbers (impls/ and bench/, the gate, the
    statistics and the engine too): two sessions of one run (--resume) must share it."""
    return _files_hash([*ROOT.glob("impls/*.py"), *ROOT.glob("bench/**/*.py")], relative=True)


def _files_hash(paths: list[Path], relative: bool = False) -> str:
    """sha256 over ``paths`` in order, each by its name (its path from the root if ``relative``:
    bench/ holds two __init__.py) and its bytes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        name = str(path.relative_to(ROOT)) if relative else path.name
        digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
            cwd=ROOT,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10, cwd=ROOT
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def allocator() -> dict[str, str]:
    """The malloc settings every worker runs with: ``ALLOCATOR``, where the environment sets none."""
    return {name: os.environ.get(name, value) for name, value in ALLOCATOR.items()}


def describe(device: str) -> dict:
    """Versions, hardware, thread counts, flags and the allocator's settings, for every result."""
    info = {
        "versions": versions(),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "flags": {k: os.environ[k] for k in ENV_FLAGS if k in os.environ},
        "allocator": allocator(),
        "git_commit": _git_commit(),
        "engine_hash": engine_hash(),
    }
    try:
        info.update(probe("torch", device))
    except ProbeError as error:  # figures for the record only: the run goes on without them
        info["torch_facts_problem"] = str(error).splitlines()[0]
    return info


def peak_tflops(device: str, precision: str, tf32: bool = False) -> float:
    """The device's dense throughput in ``precision``, measured with torch in a process of its own
    (kept per run by measure.Sweep.peak_tflops, failures too)."""
    return probe("peak", device, precision, "tf32" if tf32 else "ieee")["tflops"]


# -- the probe process: imports torch ---------------------------------------------------


def _torch_facts(device: str) -> dict:
    import torch

    facts = {"torch_threads": torch.get_num_threads()}
    if device != "cpu":
        facts.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return facts


def _measure_peak(device: str, precision: str, fp32_precision: str) -> float:
    """The larger of two micro-benchmarks, best of five runs after a warm-up each: a square matmul
    (2048 on a CPU, 8192 on a GPU) and a 3x3 conv of 512 channels (batch 8, 32 px on a CPU, 64 px
    on a GPU), channels_last. (On CPUs oneDNN's convolutions outrun the matmul.)"""
    import torch
    import torch.nn.functional as F

    from bench.runners.torch_runner import set_precision

    dev = torch.device(device)
    cpu = dev.type == "cpu"
    set_precision(fp32_precision == "tf32")
    torch.backends.cudnn.benchmark = not cpu
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n, side = (2048, 32) if cpu else (8192, 64)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    x = torch.randn(8, 512, side, side, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    kernels = {
        2 * n**3: lambda: a @ b,
        2 * 9 * 512 * 512 * side * side * 8: lambda: F.conv2d(x, w, padding=1),
    }

    def best_seconds(kernel) -> float:
        best = float("inf")
        for i in range(6):
            start = time.perf_counter()
            kernel()
            if not cpu:
                torch.cuda.synchronize(dev)
            if i:  # the first is warm-up
                best = min(best, time.perf_counter() - start)
        return best

    return max(flop / best_seconds(kernel) / 1e12 for flop, kernel in kernels.items())


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "gpus":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        answer: dict = {
            "gpus": [torch.cuda.get_device_name(i) for i in range(count)],
            "memory": [torch.cuda.get_device_properties(i).total_memory for i in range(count)],
        }
    elif command == "torch":
        answer = _torch_facts(args[0])
    elif command == "peak":
        answer = {"tflops": _measure_peak(*args)}
    else:
        raise SystemExit(f"python -m bench.environment: unknown command {command!r}")
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
