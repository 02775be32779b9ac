"""What every runner loads: the same canonical weights, batch, labels and pixel weights.

Weights are PyTorch's default initialisation of the spec under a fixed seed,
as a canonical dict. The batch is synthetic microscopy (bench/cells.py), its
labels the foreground and its pixel weights the paper's weight map, cropped to
the network's output. All are cached, so every path of a session reads the
very same arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from bench import cells
from impls import convert, torch_unet
from impls.losses import weight_map
from impls.spec import UNetSpec

SEED = 0


@dataclass(frozen=True)
class Workload:
    weights: dict[str, np.ndarray]  # canonical, float32
    images: np.ndarray  # (batch, in_channels, size, size) float32, NCHW
    labels: np.ndarray  # (batch, out_h, out_w) int32 class indices
    pixel_weights: np.ndarray  # (batch, out_h, out_w) float32: the paper's weight map


@functools.cache
def initial_weights(spec: UNetSpec) -> dict[str, np.ndarray]:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return convert.from_torch(torch_unet.build(spec))


def crop(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop (..., H, W) maps to (h, w): labels of an unpadded network's output."""
    top, left = (maps.shape[-2] - h) // 2, (maps.shape[-1] - w) // 2
    return maps[..., top : top + h, left : left + w]


@functools.cache
def workload(spec: UNetSpec, batch: int, size: int) -> Workload:
    out_h, out_w = spec.check_input((batch, spec.in_channels, size, size))
    data = cells.generate(batch, size, seed=SEED)
    images = np.repeat(data.images, spec.in_channels, axis=1)
    labels = crop(data.foreground, out_h, out_w).astype(np.int32)
    pixel_weights = crop(np.stack([weight_map(i) for i in data.instances]), out_h, out_w)
    return Workload(initial_weights(spec), np.ascontiguousarray(images), labels, pixel_weights)
