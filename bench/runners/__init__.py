"""One runner per framework path, behind one small interface.

``make_runner`` builds the U-Net of a spec in one framework path, loads the
workload's canonical weights and seeded batch, and returns a ``Runner``.
This package imports no framework until a runner of that framework is made.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from impls.spec import UNetSpec

TORCH_PATHS = ("torch-eager", "torch-compile", "torch-compile-max-autotune", "torch-compile-reduce-overhead")
PATHS = (*TORCH_PATHS, "jax")
CUDA_ONLY_PATHS = ("torch-compile-max-autotune", "torch-compile-reduce-overhead")
TASKS = ("train", "infer")
LOSSES = ("ce", "weighted")  # softmax cross-entropy; the same weighted pixel by pixel
LEARNING_RATE = 1e-4  # Adam's, default betas and eps, in every framework
PRECISIONS = ("fp32", "bf16")


class Runner(Protocol):
    """A U-Net, its weights, one seeded batch and one Adam optimizer on one device.

    ``infer`` and ``train_step`` return only when the device has finished and
    copy nothing to the host, so a timer around one call measures device work.
    """

    path: str
    device_name: str
    settings: dict[str, Any]  # what was used (compile mode, TF32, channels_last, ...), recorded

    def infer(self) -> None:
        """Eval-mode forward of the batch."""

    def train_step(self) -> None:
        """Train-mode forward, softmax cross-entropy, backward, Adam update, BatchNorm statistics."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Eval-mode logits (NCHW, on the host) for a host batch (NCHW) of the runner's shape."""

    def fit(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
        """One train step on a host batch (weighted cross-entropy if ``pixel_weights``); its loss."""

    def outputs(self, task: str) -> dict[str, np.ndarray]:
        """From the initial weights: what the parity gate compares, on the host.

        ``infer``: {"logits"}; ``train``: {"logits" of the first step, "loss" of two steps}.
        (Not the second step's logits: float32 Adam's first step moves every weight
        whose gradient is rounding noise by about the learning rate, differently
        in each framework, as the core parity tests explain.)
        """

    def reset_compilation(self) -> None:
        """Drop in-memory compiled code, keeping the on-disk compile caches."""

    def reset_peak_memory(self) -> None: ...

    def peak_memory_bytes(self) -> int | None:
        """Peak memory since reset_peak_memory, by ``settings["memory"]``'s method."""


def make_runner(
    path: str,
    spec: UNetSpec,
    *,
    batch: int,
    size: int,
    precision: str,
    device: str,
    tf32: bool = False,
    upconv: str = "auto",
    loss: str = "ce",
    learning_rate: float = LEARNING_RATE,
    devices: int | None = None,
    sync_bn: bool = False,
) -> Runner:
    """A runner for one framework path.

    ``size`` is the input side in pixels, ``precision`` "fp32" or "bf16",
    ``device`` "cpu", "cuda" or "cuda:N". ``tf32`` lets fp32 convs use TF32 on
    CUDA (both frameworks alike; ignored on CPU). ``upconv`` picks the form of
    the transposed convs: "native", "matmul" (exact, see torch_unet), or
    "auto": whichever a quick measurement on this device finds faster.
    ``loss`` "weighted" trains ``train_step`` on the paper's pixel-weighted
    cross-entropy (impls/losses.py) rather than the plain one. Adam's
    ``learning_rate`` is the same in every framework.

    ``devices``: a data-parallel runner over that many devices of ``device``'s
    kind (bench/runners/distributed.py; simulated ones for jax on a CPU), with
    ``batch`` the global batch; ``sync_bn`` computes BatchNorm's statistics
    over the global batch rather than per device.
    """
    if path not in PATHS:
        raise ValueError(f"path {path!r}: expected one of {', '.join(PATHS)}")
    if precision not in (*PRECISIONS, "fp64"):  # fp64: for equivalence tests, not a benchmark axis
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}: expected one of {', '.join(LOSSES)}")
    if upconv not in ("auto", "native", "matmul"):
        raise ValueError(f"upconv {upconv!r}: expected 'auto', 'native' or 'matmul'")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if path in CUDA_ONLY_PATHS and device == "cpu":
        raise ValueError(f"path {path!r} needs a CUDA device (it relies on CUDA graphs or Triton autotuning)")
    spec.check_input((batch, spec.in_channels, size, size))
    case = dict(
        batch=batch,
        size=size,
        precision=precision,
        device=device,
        tf32=tf32,
        upconv=upconv,
        loss=loss,
        learning_rate=learning_rate,
    )
    if devices is not None:
        from bench.runners.distributed import DistributedRunner

        return DistributedRunner(path, spec, devices=devices, sync_bn=sync_bn, **case)
    framework = "bench.runners.jax_runner" if path == "jax" else "bench.runners.torch_runner"
    return importlib.import_module(framework).make(path, spec, **case)
