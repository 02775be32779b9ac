"""What every runner loads: the same canonical weights, batch and labels.

Weights are PyTorch's default initialisation of the spec under a fixed seed,
as a canonical dict; the batch and labels come from numpy's seeded generator.
Both are cached, so every path of a session reads the very same arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from impls import convert, torch_unet
from impls.spec import UNetSpec

SEED = 0
LEARNING_RATE = 1e-4  # Adam, default betas and eps, in every framework


@dataclass(frozen=True)
class Workload:
    weights: dict[str, np.ndarray]  # canonical, float32
    images: np.ndarray  # (batch, in_channels, size, size) float32, NCHW
    labels: np.ndarray  # (batch, out_h, out_w) int32 class indices


@functools.cache
def initial_weights(spec: UNetSpec) -> dict[str, np.ndarray]:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return convert.from_torch(torch_unet.build(spec))


@functools.cache
def workload(spec: UNetSpec, batch: int, size: int) -> Workload:
    out_h, out_w = spec.check_input((batch, spec.in_channels, size, size))
    rng = np.random.default_rng(SEED)
    images = rng.standard_normal((batch, spec.in_channels, size, size), dtype=np.float32)
    labels = rng.integers(0, spec.num_classes, (batch, out_h, out_w), dtype=np.int32)
    return Workload(initial_weights(spec), images, labels)
