"""PyTorch and Flax compute the same function from the same canonical weights.

Every combination of padding, norm, upsample and conv_bias, at small widths and
depths 1 to 4, with random non-zero weights and BatchNorm statistics; and in 3D,
volumes through networks that cover every value of every option (instance norm
and leaky ReLU included) between them.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from impls import convert, flax_unet, torch_unet
from impls.checks import err
from impls.spec import PADDINGS, UPSAMPLES, UNetSpec
from tests.helpers import (
    assert_close,
    batch,
    channels_first,
    channels_last,
    conditioned_batch,
    flax_forward,
    flax_optimizer,
    flax_step,
    random_weights,
    torch_step,
)

# float32 Adam turns gradient rounding noise into steps of about the learning
# rate, so the float32 loss trajectories drift apart in proportion to it.
LR_FLOAT32 = 1e-4
LR_FLOAT64 = 1e-3
ADAM_STEPS = 5
BATCH = 2


def _specs() -> list[UNetSpec]:
    combos = itertools.product(PADDINGS, ("batch", "none"), UPSAMPLES, (True, False))
    return [
        UNetSpec(
            in_channels=1 + i % 2,
            num_classes=2 + i % 3,
            width=4,
            depth=1 + (i + i // 4) % 4,
            padding=padding,
            norm=norm,
            upsample=upsample,
            conv_bias=conv_bias,
        )
        for i, (padding, norm, upsample, conv_bias) in enumerate(combos)
    ]


def _volumetric(
    padding: str, norm: str, upsample: str, conv_bias: bool, activation: str, depth: int
) -> UNetSpec:
    options = dict(padding=padding, norm=norm, upsample=upsample, conv_bias=conv_bias, activation=activation)
    return UNetSpec(in_channels=1 + depth % 2, width=4, depth=depth, dims=3, **options)


# Between them every padding, norm, upsample, conv_bias and activation (3D compiles cost more).
SPECS_3D = [
    _volumetric("same", "instance", "bilinear", True, "leaky_relu", 2),
    _volumetric("valid", "batch", "transpose", False, "relu", 1),
    _volumetric("same", "none", "transpose", True, "leaky_relu", 2),
    _volumetric("valid", "instance", "bilinear", False, "relu", 1),
]
SPECS = _specs() + SPECS_3D


def _id(spec: UNetSpec) -> str:
    bias = "bias" if spec.conv_bias else "nobias"
    volumetric = f"3d-{spec.activation}-" if spec.dims == 3 else ""
    return f"{volumetric}{spec.padding}-{spec.norm}-{spec.upsample}-{bias}-d{spec.depth}"


def _pair(spec: UNetSpec, weights: dict, torch_dtype: torch.dtype, jax_dtype: jnp.dtype):
    t = convert.to_torch(weights, torch_unet.build(spec, dtype=torch_dtype))
    f = convert.to_flax(weights, flax_unet.abstract(spec, dtype=jax_dtype))
    return t, f


@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_float32(spec: UNetSpec) -> None:
    """Eval and train forward, loss, gradients, running statistics; then losses of Adam steps."""
    weights = random_weights(spec, seed=1)
    t, f = _pair(spec, weights, torch.float32, jnp.float32)
    x, y = conditioned_batch(spec, weights, BATCH, seed=2)

    t.eval()
    f.eval()
    eval_t = t(torch.from_numpy(x)).detach().numpy()
    eval_f = channels_first(flax_forward(f, jnp.asarray(channels_last(x))))
    assert eval_t.shape == (BATCH, spec.num_classes, *spec.output_size(*x.shape[2:]))
    assert err(eval_f, eval_t) <= 1e-5, "eval-mode forward"

    t_opt = torch.optim.Adam(t.parameters(), lr=LR_FLOAT32)
    f_opt = flax_optimizer(f, LR_FLOAT32)
    loss_t, logits_t, grads_t = torch_step(t, t_opt, x, y)
    loss_f, logits_f, grads_f = flax_step(f, f_opt, x, y)
    assert err(logits_f, logits_t) <= 1e-5, "train-mode forward (batch statistics)"
    assert err(loss_f, loss_t) <= 1e-4, "loss"
    assert_close(grads_f, grads_t, 1e-4, spec, "gradients")
    running = [n for n in spec.param_shapes() if ".running_" in n]
    assert_close(
        {n: convert.from_flax(f)[n] for n in running},
        {n: convert.from_torch(t)[n] for n in running},
        1e-5,
        spec,
        "running statistics after one train step",
    )
    if spec.norm == "batch":  # the step really moved them
        assert (
            err(convert.from_torch(t)["down0.norm1.running_var"], weights["down0.norm1.running_var"]) > 1e-3
        )

    for step in range(1, ADAM_STEPS):
        x, y = batch(spec, BATCH, seed=10 + step)
        loss_t = torch_step(t, t_opt, x, y)[0]
        loss_f = flax_step(f, f_opt, x, y)[0]
        assert err(loss_f, loss_t) <= 1e-4, f"loss at step {step + 1}: torch {loss_t}, flax {loss_f}"
    assert err(convert.from_flax(f)["head.weight"], weights["head.weight"]) > 1e-4, "Adam moved the weights"


@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_float64_adam_weights(spec: UNetSpec) -> None:
    with jax.enable_x64(True):
        weights = random_weights(spec, seed=4, dtype=np.float64)
        t, f = _pair(spec, weights, torch.float64, jnp.float64)
        t_opt = torch.optim.Adam(t.parameters(), lr=LR_FLOAT64)
        f_opt = flax_optimizer(f, LR_FLOAT64)
        for step in range(ADAM_STEPS):
            x, y = batch(spec, BATCH, seed=20 + step, dtype=np.float64)
            torch_step(t, t_opt, x, y)
            flax_step(f, f_opt, x, y)
        after_t, after_f = convert.from_torch(t), convert.from_flax(f)
    assert all(v.dtype == np.float64 for v in after_f.values())
    assert_close(
        after_f, after_t, 1e-8, spec, f"weights and running statistics after {ADAM_STEPS} Adam steps"
    )
    assert err(after_t["head.weight"], weights["head.weight"]) > 1e-4, "training moved the weights"
