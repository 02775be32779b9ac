"""What a run was measured on: versions, hardware, settings; and the device's peak.

The sweep's process imports no framework: what only torch can say (is there a
GPU, its name, CUDA and cuDNN versions, the device's measured peak) is asked
of ``python -m bench.environment`` in a process of its own, which runs bench/torch_probe.py.
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
from importlib import metadata
from pathlib import Path

from bench.device_names import cuda_index, well_formed
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
# glibc's malloc with fixed thresholds, in every worker of every framework (bench/sweep/process_worker.py). By
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
    return _gpus()["memory"][cuda_index(device)]


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used here, naming the devices there are; None where it can."""
    if not well_formed(device):
        return "expected cpu, cuda or cuda:N"
    here = devices()
    if device in here or (device == "cuda" and len(here) > 1):
        return None
    problem = "no CUDA device on this machine" if len(here) == 1 else "no such device"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    told = f" (CUDA_VISIBLE_DEVICES={hidden} hides the others)" if hidden is not None else ""
    return f"{problem}; devices here: {', '.join(here)}{told}"


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
    return gpus()[cuda_index(device)]


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


if __name__ == "__main__":  # the probe's command, which names it in every problem it reports
    from bench import torch_probe

    sys.exit(torch_probe.main(sys.argv[1:]))
