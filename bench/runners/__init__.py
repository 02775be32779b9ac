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
) -> Runner:
    """A runner for one framework path.

    ``size`` is the input side in pixels, ``precision`` "fp32" or "bf16",
    ``device`` "cpu", "cuda" or "cuda:N". ``tf32`` lets fp32 convs use TF32 on
    CUDA (both frameworks alike; ignored on CPU). ``upconv`` picks the form of
    the transposed convs: "native", "matmul" (exact, see torch_unet), or
    "auto": whichever a quick measurement on this device finds faster.
    """
    if path not in PATHS:
        raise ValueError(f"path {path!r}: expected one of {', '.join(PATHS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if upconv not in ("auto", "native", "matmul"):
        raise ValueError(f"upconv {upconv!r}: expected 'auto', 'native' or 'matmul'")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if path in CUDA_ONLY_PATHS and device == "cpu":
        raise ValueError(f"path {path!r} needs a CUDA device (it relies on CUDA graphs or Triton autotuning)")
    spec.check_input((batch, spec.in_channels, size, size))
    module = importlib.import_module(
        "bench.runners.jax_runner" if path == "jax" else "bench.runners.torch_runner"
    )
    return module.make(
        path, spec, batch=batch, size=size, precision=precision, device=device, tf32=tf32, upconv=upconv
    )
