"""What every runner loads: the same canonical weights, batch, labels and pixel weights.

Weights are PyTorch's default initialisation of the spec under a fixed seed,
with BatchNorm's parameters and statistics drawn as a trained network's might be,
as a canonical dict; the sweep has a torch worker write them to a safetensors
file once (``RunConfig.weights_file``), which every other worker reads, so a
jax worker never imports torch. The batch is synthetic microscopy
(bench/cells.py), its labels the foreground and its pixel weights the paper's
weight map, cropped to the network's output. numpy only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from bench import cells
from bench.runners.config import RunConfig
from impls import convert
from impls.losses import weight_map
from impls.spec import UNetSpec

SEED = 0


@dataclass(frozen=True)
class Workload:
    weights: dict[str, np.ndarray]  # canonical, float32
    images: np.ndarray  # (batch, in_channels, size, size) float32, NCHW
    labels: np.ndarray  # (batch, out_h, out_w) int32 class indices
    pixel_weights: np.ndarray  # (batch, out_h, out_w) float32: the paper's weight map


# BatchNorm's leaves as in a trained network, not PyTorch's 1, 0, 0, 1: at those, inference-mode
# BatchNorm is the identity, and a network without it, or one that folds it wrongly (a runtime,
# freezing), would compute the same logits. Drawn as a numpy Generator's (low, high) uniform.
BATCHNORM_RANGES = {
    "weight": (0.5, 1.5),
    "bias": (-0.2, 0.2),
    "running_mean": (-0.2, 0.2),
    "running_var": (0.5, 1.5),
}


@functools.cache
def from_scratch_weights(spec: UNetSpec) -> dict[str, np.ndarray]:
    """PyTorch's default initialisation under SEED: where training from scratch starts
    (bench/train_cells.py). Imports torch."""
    import torch

    from impls import torch_unet

    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return convert.from_torch(torch_unet.build(spec))


@functools.cache
def initial_weights(spec: UNetSpec) -> dict[str, np.ndarray]:
    """The benchmarks' and the gate's weights: ``from_scratch_weights`` with BatchNorm's affine
    parameters and running statistics drawn from BATCHNORM_RANGES (imports torch: made once per
    sweep, by a torch worker)."""
    weights = dict(from_scratch_weights(spec))
    rng = np.random.default_rng(SEED)
    for name, value in weights.items():
        module, leaf = name.rsplit(".", 1)
        if module.rsplit(".", 1)[-1].startswith("norm"):
            weights[name] = rng.uniform(*BATCHNORM_RANGES[leaf], size=value.shape).astype(value.dtype)
    return weights


def weights(config: RunConfig) -> dict[str, np.ndarray]:
    if config.weights_file is None:
        return initial_weights(config.spec)
    loaded, spec = convert.load(config.weights_file)
    if spec != config.spec:
        raise ValueError(f"{config.weights_file} holds weights of {spec}, the case needs {config.spec}")
    return loaded


def crop(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop (..., H, W) maps to (h, w): labels of an unpadded network's output."""
    top, left = (maps.shape[-2] - h) // 2, (maps.shape[-1] - w) // 2
    return maps[..., top : top + h, left : left + w]


@functools.cache
def batch(spec: UNetSpec, batch: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, pixel weights) of the seeded synthetic batch."""
    out_h, out_w = spec.check_input((batch, spec.in_channels, size, size))
    data = cells.generate(batch, size, seed=SEED)
    images = np.repeat(data.images, spec.in_channels, axis=1)
    labels = crop(data.foreground, out_h, out_w).astype(np.int32)
    pixel_weights = crop(np.stack([weight_map(i) for i in data.instances]), out_h, out_w)
    return np.ascontiguousarray(images), labels, pixel_weights


def workload(config: RunConfig) -> Workload:
    return Workload(weights(config), *batch(config.spec, config.batch, config.size))


@functools.cache
def whole_image(spec: UNetSpec, image_size: int) -> np.ndarray:
    """The "tiled" task's (C, H, W) image: synthetic cells, ``image_size`` on a side."""
    image = cells.generate(1, image_size, seed=SEED).images[0]
    return np.repeat(image, spec.in_channels, axis=0)
