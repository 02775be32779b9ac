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
from bench.run_config import RunConfig
from impls import convert
from impls.losses import weight_map
from impls.spec import UNetSpec

SEED = 0


@dataclass(frozen=True)
class Workload:
    weights: dict[str, np.ndarray]  # canonical, float32
    images: np.ndarray  # (batch, in_channels, size, size) float32, NCHW (a cube of sides: NCDHW)
    labels: np.ndarray  # (batch, out_h, out_w) int32 class indices (out_d first in 3D)
    pixel_weights: np.ndarray  # (batch, out_h, out_w) float32: the paper's weight map (3D: voxels')


# BatchNorm as in a trained network, not at PyTorch's 1, 0, 0, 1: at those, inference-mode BatchNorm
# is the identity, and a network without it, or one that folds it wrongly (a runtime, freezing),
# would compute the same logits. The affine parameters are drawn as a numpy Generator's (low, high)
# uniform; the running statistics are the statistics each BatchNorm's input really has (measured
# on a batch in train mode, as training would have tracked them), the mean moved by a draw of
# RUNNING_MEAN_SHIFT standard deviations and the variance scaled by a draw of RUNNING_VAR_SCALE.
# (Statistics drawn without regard to the activations leave inference mode a network whose
# activations fade layer by layer, and whose logits are nearly constant: too weak a test.)
BATCHNORM_RANGES = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2)}
RUNNING_MEAN_SHIFT = (-0.2, 0.2)
RUNNING_VAR_SCALE = (0.5, 1.5)


@functools.cache
def from_scratch_weights(spec: UNetSpec) -> dict[str, np.ndarray]:
    """PyTorch's default initialisation under SEED: where training from scratch starts
    (bench/train_cells.py). Imports torch."""
    import torch

    from impls import torch_unet

    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return convert.from_torch(torch_unet.build(spec))


def batchnorm_statistics(
    spec: UNetSpec, weights: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each BatchNorm's input mean and (unbiased) variance per channel, by its canonical module name,
    in a train-mode forward of ``weights`` over two synthetic images with a bottleneck of at least
    4 pixels a side. Imports torch."""
    import torch

    from impls import torch_unet

    side = 4 * 2**spec.depth
    side = side if side in spec.nearest_valid_sizes(side + 1) else spec.nearest_valid_sizes(side)[-1]
    images = np.repeat(cells.generate(2, side, seed=SEED, dims=spec.dims).images, spec.in_channels, axis=1)
    model = convert.to_torch(weights, torch_unet.build(spec, torch.float64)).train()
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def record(name: str, x: torch.Tensor) -> None:
        axes = (0, *range(2, x.ndim))
        found[name] = (x.mean(axes).numpy(), x.var(axes, unbiased=True).numpy())

    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.register_forward_pre_hook(lambda m, inputs, name=name: record(name, inputs[0]))
    with torch.no_grad():
        model(torch.from_numpy(images.astype(np.float64)))
    return found


@functools.cache
def initial_weights(spec: UNetSpec) -> dict[str, np.ndarray]:
    """The benchmarks' and the gate's weights: ``from_scratch_weights`` with BatchNorm as in a
    trained network (BATCHNORM_RANGES, RUNNING_MEAN_SHIFT, RUNNING_VAR_SCALE). Imports torch: made
    once per sweep, by a torch worker."""
    weights = dict(from_scratch_weights(spec))
    rng = np.random.default_rng(SEED)
    for name, value in weights.items():
        module, leaf = name.rsplit(".", 1)
        if leaf in BATCHNORM_RANGES and module.rsplit(".", 1)[-1].startswith("norm"):
            weights[name] = rng.uniform(*BATCHNORM_RANGES[leaf], size=value.shape).astype(value.dtype)
    for module, (mean, var) in batchnorm_statistics(spec, weights).items():
        shift = rng.uniform(*RUNNING_MEAN_SHIFT, size=mean.shape)
        weights[f"{module}.running_mean"] = (mean + shift * np.sqrt(var)).astype(np.float32)
        weights[f"{module}.running_var"] = (var * rng.uniform(*RUNNING_VAR_SCALE, size=var.shape)).astype(
            np.float32
        )
    return weights


def weights(config: RunConfig) -> dict[str, np.ndarray]:
    if config.weights_file is None:
        return initial_weights(config.spec)
    loaded, spec = convert.load(config.weights_file)
    if spec != config.spec:
        raise ValueError(f"{config.weights_file} holds weights of {spec}, the case needs {config.spec}")
    return loaded


def crop(maps: np.ndarray, *sides: int) -> np.ndarray:
    """Centre-crop (..., H, W) maps to (h, w) (or (..., D, H, W) to (d, h, w)): labels of an
    unpadded network's output."""
    starts = [(have - want) // 2 for have, want in zip(maps.shape[-len(sides) :], sides, strict=True)]
    return maps[(..., *(slice(start, start + side) for start, side in zip(starts, sides, strict=True)))]


@functools.cache
def batch(
    spec: UNetSpec, batch: int, size: int, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, pixel weights) of the seeded synthetic batch (of volumes, for a 3D spec): the
    timed one at SEED."""
    out = spec.check_input((batch, spec.in_channels, *(size,) * spec.dims))
    data = cells.generate(batch, size, seed=seed, dims=spec.dims)
    images = np.repeat(data.images, spec.in_channels, axis=1)
    labels = crop(data.foreground, *out).astype(np.int32)
    pixel_weights = crop(np.stack([weight_map(i) for i in data.instances]), *out)
    return np.ascontiguousarray(images), labels, pixel_weights


def workload(config: RunConfig) -> Workload:
    return Workload(weights(config), *batch(config.spec, config.batch, config.size))


@functools.cache
def whole_image(spec: UNetSpec, image_size: int, seed: int = SEED) -> np.ndarray:
    """The "tiled" task's (C, H, W) image, or the "window" task's (C, D, H, W) volume for a 3D spec:
    synthetic cells, ``image_size`` on a side."""
    image = cells.generate(1, image_size, seed=seed, dims=spec.dims).images[0]
    return np.repeat(image, spec.in_channels, axis=0)
