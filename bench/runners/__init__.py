"""One runner per framework path, behind one small interface.

A ``RunConfig`` (bench/run_config.py) defines a case; ``build`` makes its
runner in this process (torch_runner, jax_runner, or runtime_runner for the
inference runtimes, whose train_step refuses), loading the workload's
canonical weights and seeded batch; the benchmarks run every case in fresh
worker processes instead (bench/sweep/process_worker.py), each of which calls ``build``,
data-parallel ones too. ``make_runner`` is the keyword-argument convenience.
This package imports no framework until a runner of that framework is built.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from bench.run_config import (
    CUDA_ONLY_PATHS,
    JAX_PATHS,
    LEARNING_RATE,
    LOSSES,
    MEMORY_FORMATS,
    PATHS,
    PLAIN_PATHS,
    PRECISIONS,
    RUNTIME_PATHS,
    TASKS,
    TORCH_PATHS,
    RunConfig,
)
from impls.spec import UNetSpec

__all__ = [
    "CUDA_ONLY_PATHS",
    "JAX_PATHS",
    "LEARNING_RATE",
    "LOSSES",
    "MEMORY_FORMATS",
    "PATHS",
    "PLAIN_PATHS",
    "PRECISIONS",
    "RUNTIME_PATHS",
    "TASKS",
    "TORCH_PATHS",
    "RunConfig",
    "Runner",
    "build",
    "make_runner",
]


class Runner(Protocol):
    """A U-Net, its weights, one seeded batch and one Adam optimizer on its device(s).

    ``infer`` and ``train_step`` return only when the device has finished and
    copy nothing to the host, so a timer around one call measures device work.
    """

    config: RunConfig
    device_name: str
    settings: dict[str, Any]  # what was used (style, compile mode, TF32, memory format, ...), recorded

    def infer(self) -> None:
        """Eval-mode forward of the batch."""

    def train_step(self) -> None:
        """Train-mode forward, softmax cross-entropy, backward, Adam update, BatchNorm statistics."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Eval-mode logits (NCHW, on the host) for a host batch (NCHW) of the runner's shape."""

    def fit(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
        """One train step on a host batch (weighted cross-entropy if ``pixel_weights``); its loss."""

    def outputs(self, task: str, seed: int = 0) -> dict[str, Any]:
        """From the initial weights, on the batch drawn with ``seed`` (workload.SEED: the timed
        one): what the parity gate compares, on the host.

        ``infer``: {"logits"}; ``train``: {"logits" of the first step, "loss" of two steps,
        "gradients" of the first step (a canonical dict, from the step that is timed), "weights"
        after the two steps (canonical, running statistics included)}.
        """

    def reset_state(self) -> None:
        """Back to the initial weights and a fresh optimizer."""

    def weights(self) -> dict[str, np.ndarray]:
        """Canonical weights and running statistics now."""

    def reset_peak_memory(self) -> bool:
        """Start the peak over from the memory in use now; False where the method cannot."""

    def peak_memory_bytes(self) -> int | None:
        """Peak memory since this process started (or the last reset), by ``settings["memory"]``'s
        method."""


def runner_module(config: RunConfig) -> ModuleType:
    """The module of ``config``'s runner (importing it imports its framework)."""
    return importlib.import_module(f"bench.runners.{config.framework}_runner")


def build(config: RunConfig, placement: Any = None) -> Runner:
    """The runner of ``config`` in this process, on one device unless ``placement`` says otherwise
    (bench/runners/torch_ddp.py, bench/runners/jax_dp.py)."""
    return getattr(runner_module(config), f"{config.framework.capitalize()}Runner")(config, placement)


def make_runner(
    path: str, spec: UNetSpec, *, batch: int, size: int, precision: str, device: str, **options: Any
) -> Runner:
    """A runner for one framework path in this process; ``options`` are RunConfig's other fields."""
    config = RunConfig(path, spec, size, batch, precision=precision, device=device, **options)
    if config.devices is not None:
        raise ValueError(
            "a data-parallel runner runs in worker processes, one per device: "
            "bench.sweep.process_worker.ProcessWorker(RunConfig(..., devices=N))"
        )
    return build(config)
