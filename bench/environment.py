"""What a run was measured on: versions, hardware, settings; and the device's peak.

Frameworks are imported inside the functions, so that the benchmark plugin
can call these without importing torch or jax itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

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
)
ENV_FLAGS = (
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "TORCHINDUCTOR_CACHE_DIR",
    "JAX_COMPILATION_CACHE_DIR",
)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def device_slug(device: str) -> str:
    """A folder-friendly name: 'amd-epyc-2-cores', 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def describe(device: str) -> dict:
    """Versions, hardware, thread counts and flags, for every result."""
    import jax
    import torch

    versions = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    info = {
        "versions": versions,
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax_devices": [str(d) for d in jax.devices()],
        "platform": platform.platform(),
        "flags": {k: os.environ[k] for k in ENV_FLAGS if k in os.environ},
        "git_commit": _git_commit(),
    }
    if device != "cpu":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


@functools.cache
def peak_tflops(device: str, precision: str, tf32: bool = False) -> float:
    """The device's dense matmul throughput in ``precision``, measured with torch.

    A square matmul large enough to saturate the device (2048 on a CPU, 8192 on
    a GPU), best of five after a warm-up: the ceiling that utilization is
    measured against.
    """
    import torch

    dev = torch.device(device)
    n = 2048 if dev.type == "cpu" else 8192
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        best = float("inf")
        for i in range(6):
            start = time.perf_counter()
            a @ b
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:  # the first is warm-up
                best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 / best / 1e12
