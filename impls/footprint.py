"""How much memory a U-Net's work needs, estimated from its spec, and how much this machine can give.

A benchmark case or an export asked for at a batch or size the machine cannot hold would run
until the kernel kills it, taking other processes with it. ``estimate_bytes`` errs high, by at
most 2x by measurement (``python -m bench.footprint``: docs/memory.md), so that such work is
refused before it starts; ``available_bytes`` is the smaller of the memory the system has
available and what the process's cgroup still allows. Imports no framework.
"""

from __future__ import annotations

import math
from pathlib import Path

from impls.spec import UNetSpec

MiB = 2**20
# Per kind of process (a benchmark worker of eager torch, compiled torch, jax or an inference runtime;
# an export by route) and task: the resident memory of a CPU process at no features, in MiB, and its
# peak above that per byte of features (the conv outputs of the whole batch). Written by
# python -m bench.footprint --fit results/footprint-2026-12-05-amd-epyc-2-cores-calibration
# results/footprint-2026-12-05-amd-epyc-2-cores-evidence
# (docs/memory.md; fit below): each errs high.
FITTED = {
    ("torch-eager", "train"): (1923, 4.3),
    ("torch-compiled", "train"): (2209, 2.46),
    ("jax", "train"): (3072, 4.68),
    ("torch-eager", "infer"): (734, 1.5),
    ("torch-compiled", "infer"): (789, 0.99),
    ("jax", "infer"): (1863, 0.67),
    ("runtime", "infer"): (1688, 2.14),
    ("export-onnx", "infer"): (1068, 1.83),
    ("export-aoti", "infer"): (1154, 1.0),
    ("export-jax", "infer"): (1816, 0.66),
}
KINDS = tuple(dict.fromkeys(kind for kind, _ in FITTED))
SLOPE_MARGIN, INTERCEPT_MARGIN = 1.25, 1.1
# A GPU's context and its libraries' workspaces, in the device's memory (not calibrated: no GPU was
# measured); the features' share is the CPU's.
GPU_RUNTIME_BYTES = 2 * 2**30
# Weights, gradients and Adam's two moments when training.
WEIGHT_COPIES = {"train": 4, "infer": 1}
# Every feature counted at 4 bytes, in bf16 too: torch's autocast keeps BatchNorm's outputs in fp32.
FEATURE_ELEMENT_BYTES = 4


def feature_bytes(spec: UNetSpec, size: int | tuple[int, ...]) -> int:
    """Bytes of every conv's output for one image of side ``size`` (or one side per axis: height and
    width, and depth first in 3D), in fp32."""
    sides = (size,) * spec.dims if isinstance(size, int) else tuple(size)
    per_axis = [spec.conv_layers(side) for side in sides]
    elements = sum(
        layers[0].cout * math.prod(layer.side for layer in layers) for layers in zip(*per_axis, strict=True)
    )
    return elements * FEATURE_ELEMENT_BYTES


def weight_bytes(spec: UNetSpec) -> int:
    """Bytes of the canonical weights, in float32."""
    return 4 * sum(math.prod(shape) for shape in spec.param_shapes().values())


def estimate_bytes(
    spec: UNetSpec,
    size: int | tuple[int, ...],
    batch: int,
    *,
    task: str,
    kind: str,
    device: str = "cpu",
) -> int:
    """An upper estimate of one process's peak memory for ``task`` ("train", or "infer": a forward,
    tiled or not) at ``batch`` images of side ``size``, in a process of ``kind`` (KINDS): on a CPU
    its resident memory, runtime included; on a GPU the device memory it takes."""
    task = "train" if task == "train" else "infer"
    runtime_mib, factor = FITTED[(kind, task)]
    runtime = runtime_mib * MiB if device == "cpu" else GPU_RUNTIME_BYTES
    return int(
        runtime + factor * batch * feature_bytes(spec, size) + WEIGHT_COPIES[task] * weight_bytes(spec)
    )


def fit(points: list[tuple[int, int, int]]) -> tuple[int, float]:
    """(runtime MiB, factor) for one kind and task from its measured (features, weights term, peak)
    bytes: the least-squares slope of the peak over the features, raised by SLOPE_MARGIN, then the
    largest intercept under that slope, raised by INTERCEPT_MARGIN. (The steepest rise between two
    feature sizes, tried first, let the allocator's noise between nearby sizes set the slope.)"""
    xs = [features for features, _, _ in points]
    ys = [peak - weights for _, weights, peak in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("a fit needs measurements at two or more feature sizes")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    factor = round(max(slope, 0.0) * SLOPE_MARGIN, 2)
    intercept = max(y - factor * x for x, y in zip(xs, ys, strict=True))
    return max(0, math.ceil(intercept * INTERCEPT_MARGIN / MiB)), factor


CGROUPS = Path("/proc/self/cgroup")  # which groups this process is in
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where they are mounted


def _cgroup_headroom() -> int | None:
    """What this process's memory cgroup (v2 or v1), or any above it, still allows: the smallest
    limit less what is in use (less the page cache it would reclaim first); None without a limit."""
    headrooms = []
    for line in CGROUPS.read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        if controllers == "":  # v2
            files = ("memory.max", "memory.current", "memory.stat", "inactive_file")
            root = CGROUP_ROOT
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file")
            root = CGROUP_ROOT / "memory"
        else:
            continue
        folder = root / group.lstrip("/")
        while True:
            headroom = _headroom(folder, *files)
            if headroom is not None:
                headrooms.append(headroom)
            if folder == root:
                break
            folder = folder.parent
    return min(headrooms, default=None)


def _headroom(folder: Path, limit_file: str, usage_file: str, stat_file: str, reclaimable: str) -> int | None:
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= 2**62:  # v1 writes "no limit" as a page-rounded 2**63 - 1
            return None
        usage = int((folder / usage_file).read_text())
        stats = dict(line.split() for line in (folder / stat_file).read_text().splitlines())
    except (OSError, ValueError):
        return None
    return int(limit) - usage + int(stats.get(reclaimable, 0))


def available_bytes() -> int:
    """The memory new work can take here: the smaller of what the system has available and what
    the cgroup allows."""
    import psutil

    available = psutil.virtual_memory().available
    try:
        headroom = _cgroup_headroom()
    except OSError:  # not Linux, or no /proc
        headroom = None
    return available if headroom is None else max(0, min(available, headroom))


def too_large(needed: int, available: int, what: str) -> str | None:
    """Why work needing about ``needed`` bytes cannot start with ``available`` free; None if it can."""
    if needed <= available:
        return None
    return (
        f"{what} needs about {needed / 2**30:.1f} GiB (an upper estimate), more than the "
        f"{available / 2**30:.1f} GiB free here"
    )
