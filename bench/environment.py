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
    """The device's dense throughput in ``precision``, measured with torch: the ceiling for utilization.

    The larger of two micro-benchmarks, best of five runs after a warm-up
    each: a square matmul (2048 on a CPU, 8192 on a GPU) and a 3x3 conv of
    512 channels (batch 8, 32 px on a CPU, 64 px on a GPU), channels_last.
    (On CPUs oneDNN's convolutions outrun the matmul.)
    """
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    cpu = dev.type == "cpu"
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

    with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=tf32):
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            return max(flop / best_seconds(kernel) / 1e12 for flop, kernel in kernels.items())
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
