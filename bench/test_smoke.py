"""Smoke benchmark: the default U-Net's eval forward at 128 px in each framework."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from impls import convert, flax_unet, torch_unet
from impls.spec import UNetSpec

SPEC = UNetSpec()
SIZE = 128


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return convert.from_torch(torch_unet.build(SPEC))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, SPEC.in_channels, SIZE, SIZE)).astype(np.float32)


def test_torch_eager_infer(benchmark, weights, image) -> None:
    model = convert.to_torch(weights, torch_unet.build(SPEC)).eval()
    x = torch.from_numpy(image)
    with torch.no_grad():
        model(x)  # warm-up outside the timed rounds
        benchmark(model, x)


def test_jax_infer(benchmark, weights, image) -> None:
    model = convert.to_flax(weights, flax_unet.abstract(SPEC)).eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = jnp.asarray(image.transpose(0, 2, 3, 1))
    forward(state, x).block_until_ready()  # compile outside the timed rounds
    benchmark(lambda: forward(state, x).block_until_ready())
