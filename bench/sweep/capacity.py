"""Whether a case's workers fit the device: before a case starts, and beside a group's live workers."""

from __future__ import annotations

from bench import environment
from bench.run_config import RunConfig, memory_kind, unavailable
from bench.sweep.case import Prepared
from impls import footprint

MEMORY_HEADROOM = 0.8  # of a device's memory, what the live workers of a group may hold together


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
    CPU the smaller of the memory available and the cgroup's limit); None where it fits, or where
    the case never starts (a runtime asked to train: recorded as not-applicable)."""
    if unavailable(config):
        return None
    return footprint.too_large(needed_bytes(config), environment.memory_bytes(config.device), config.id)


def crowded(prepared: list[Prepared]) -> str:
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
