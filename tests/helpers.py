"""Shared by the tests: random canonical weights, the error measure, refusals, train steps."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from bench import gate
from bench.gate import block_relative as block_relative_names
from bench.runners import LEARNING_RATE, make_runner
from bench.runners.workload import initial_weights
from impls.checks import err
from impls.convert import from_flax_state, to_flax, to_torch
from impls.flax_unet import abstract as abstract_flax
from impls.spec import UNetSpec
from impls.torch_unet import build as build_torch


def random_weights(spec: UNetSpec, seed: int = 0, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Non-zero weights at a scale that keeps activations O(1), random BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in spec.param_shapes().items():
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif ".norm" in name and name.endswith(".weight"):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) > 2:  # kernels, 2D or 3D
            transposed = name.endswith("upconv.weight") and spec.upsample == "transpose"
            fan_in = shape[0] if transposed else np.prod(shape[1:])  # one tap per output pixel
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        else:  # biases and running means
            value = rng.normal(0.0, 0.2, shape)
        weights[name] = value.astype(dtype)
    return weights


def assert_refused(call: Callable[[], object], *parts: str, error: type[Exception] = ValueError) -> str:
    """``call()`` raises ``error`` with a one-line message that holds every one of ``parts``."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    missing = [part for part in parts if part not in message]
    assert not missing and "\n" not in message, f"{missing} not in the one-line message {message!r}"
    return message


def input_sides(spec: UNetSpec, count: int = 2) -> list[int]:
    """The ``count`` smallest valid input sides that leave a bottleneck of at least 4 pixels
    (2 voxels in 3D, where 2x2x2 already holds 8).

    A tinier bottleneck makes BatchNorm normalise over a handful of values, and
    float32 training then amplifies rounding differences chaotically.
    """
    sides = []
    side = (4 if spec.dims == 2 else 2) * 2**spec.depth
    while len(sides) < count:
        try:
            spec.check_side(side)
            sides.append(side)
        except ValueError:
            pass
        side += 1
    return sides


def batch(spec: UNetSpec, n: int, seed: int = 0, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A random channels-first input (NCHW, NCDHW) whose sides all differ, and integer labels for
    its output."""
    sides = input_sides(spec, spec.dims)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, spec.in_channels, *sides)).astype(dtype)
    labels = rng.integers(0, spec.num_classes, (n, *spec.output_size(*sides)))
    return x, labels


def _pool_choice(x: np.ndarray) -> np.ndarray:
    """Per 2x2 (2x2x2) window of a channels-first map: the index of its max, or -1 where the max is 0."""
    n, c, *sides = x.shape
    dims = len(sides)
    x = x[(slice(None), slice(None), *(slice(0, side // 2 * 2) for side in sides))]
    windows = x.reshape(n, c, *(m for side in sides for m in (side // 2, 2)))
    # (n, c, s0, t0, s1, t1, ...) -> (n, c, s0, s1, ..., t0, t1, ...)
    order = (0, 1, *range(2, 2 + 2 * dims, 2), *range(3, 3 + 2 * dims, 2))
    windows = windows.transpose(order).reshape(n, c, *(side // 2 for side in sides), 2**dims)
    return np.where(windows.max(-1) > 0, windows.argmax(-1), -1)


def _kink_sides(spec: UNetSpec, weights: dict[str, np.ndarray], x: np.ndarray) -> tuple[dict, dict]:
    """Which side of every kink each framework takes in a float32 train-mode forward.

    ReLU: the sign of its input (a norm's output, or the conv's with no norm);
    max-pool: the position of each window's max.
    """
    torch_model = to_torch(weights, build_torch(spec))
    sides: tuple[dict, dict] = ({}, {})
    for name, module in torch_model.named_modules():
        block, _, layer = name.partition(".")
        if layer in ("norm1", "norm2"):
            module.register_forward_hook(
                lambda m, a, out, n=name: sides[0].update({n: out.detach().numpy() > 0})
            )
        elif not layer and block.startswith("down") and block != f"down{spec.depth}":
            module.register_forward_hook(
                lambda m, a, out, n=name: sides[0].update({n: _pool_choice(out.detach().numpy())})
            )
    torch_model.train()
    torch_model(torch.from_numpy(x))

    flax_model = to_flax(weights, abstract_flax(spec))
    captured = _captured_forward(flax_model, jnp.asarray(channels_last(x)))
    outputs = {path[:-1]: channels_first(v.get_value()[0]) for path, v in nnx.to_flat_state(captured)}
    for name in sides[0]:
        block, _, layer = name.partition(".")
        if layer:
            pre_relu = (block, layer) if spec.norm != "none" else (block, layer.replace("norm", "conv"))
            sides[1][name] = outputs[pre_relu] > 0
        else:
            sides[1][name] = _pool_choice(outputs[(block,)])
    return sides


@nnx.jit
def _captured_forward(model: nnx.Module, x: jnp.ndarray) -> nnx.State:
    """Every module's output in a forward, jitted: eagerly, each op compiles on its own (seconds)."""
    return nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)[1]


@nnx.jit
def flax_forward(model: nnx.Module, x: jnp.ndarray) -> jnp.ndarray:
    """The model's forward in its mode, jitted as the runners run it (eagerly, each op compiles on
    its own: seconds per network)."""
    return model(x)


def conditioned_batch(
    spec: UNetSpec, weights: dict[str, np.ndarray], n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A float32 batch on which both frameworks take the same side of every kink.

    A network of many ReLUs in float32 usually has some input within rounding
    of zero; where the frameworks round it to different sides, one pixel's
    gradient is switched on in one and off in the other, and a gradient
    comparison measures that coin toss, not the implementations. Such batches
    are drawn again; an implementation that really differs fails the forward
    comparison anyway.
    """
    for attempt in range(20):
        x, labels = batch(spec, n, seed=seed + 1000 * attempt)
        torch_sides, flax_sides = _kink_sides(spec, weights, x)
        if all(np.array_equal(torch_sides[k], flax_sides[k]) for k in torch_sides):
            return x, labels
    raise AssertionError("no batch in 20 on which the frameworks agree at every kink")


def channels_last(x: np.ndarray) -> np.ndarray:
    """NCHW to NHWC, NCDHW to NDHWC."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def channels_first(x: np.ndarray) -> np.ndarray:
    """NHWC to NCHW, NDHWC to NCDHW."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1))


def assert_close(
    got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], tol: float, spec: UNetSpec, what: str
) -> None:
    """Per-tensor err <= tol; zero-gradient biases are measured against their block."""
    assert sorted(got) == sorted(ref), f"{what}: different keys"
    block_relative = block_relative_names(spec)

    def kind(name: str) -> tuple[str, bool]:
        return name.split(".")[0], "running_" in name

    block_scale: dict[tuple[str, bool], float] = {}
    for name, value in ref.items():
        block_scale[kind(name)] = max(block_scale.get(kind(name), 0.0), float(np.max(np.abs(value))))
    errors = {
        name: err(got[name], ref[name], block_scale[kind(name)] if name in block_relative else None)
        for name in ref
    }
    bad = sorted(((e, n) for n, e in errors.items() if not e <= tol), reverse=True)
    assert not bad, f"{what}: {len(bad)} of {len(errors)} tensors exceed {tol:g}: " + ", ".join(
        f"{n}={e:.3g}" for e, n in bad[:8]
    )


# -- one training step in each framework: forward, softmax cross-entropy, backward, Adam


def torch_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: np.ndarray, y: np.ndarray):
    """One train step; returns (loss, logits, canonical gradients) from before the update."""
    model.train()
    optimizer.zero_grad()
    logits = model(torch.from_numpy(x))
    loss = F.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    optimizer.step()
    return loss.item(), logits.detach().numpy(), grads


def _flax_loss(model: nnx.Module, x: jnp.ndarray, y: jnp.ndarray):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit
def _flax_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jnp.ndarray, y: jnp.ndarray):
    (loss, logits), grads = nnx.value_and_grad(_flax_loss, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss, logits, grads


def flax_optimizer(model: nnx.Module, learning_rate: float) -> nnx.Optimizer:
    """Adam over the model's parameters, its state made in one jitted call (eagerly, each
    parameter shape compiles its own zeros)."""
    return nnx.jit(lambda model: nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param))(model)


def flax_step(model: nnx.Module, optimizer: nnx.Optimizer, x: np.ndarray, y: np.ndarray):
    """As torch_step, for Flax; x is channels-first and the logits come back so."""
    model.train()
    loss, logits, grads = _flax_step(model, optimizer, jnp.asarray(channels_last(x)), jnp.asarray(y))
    return float(loss), channels_first(logits), from_flax_state(grads, model.spec)


# -- the parity gate as the sweep applies it, in this process

# test_gate.py's network, size and batch; test_runners.py's TF32 test compiles torch-compile's train
# step on them too, so that inductor's FX graph cache serves both from one compile.
GATE_SPEC = UNetSpec(width=8, depth=2)
GATE_SIZE, GATE_BATCH = 32, 2


def gate_runner(path: str, spec: UNetSpec, batch: int, size: int, precision: str = "fp32", **options):
    return make_runner(path, spec, batch=batch, size=size, precision=precision, device="cpu", **options)


def gate_references(spec: UNetSpec, batch: int, size: int) -> dict:
    """torch eager's fp64, fp32 and bf16 outputs per task, on the batch of each of gate.NOISE_SEEDS."""
    found = {}
    for precision in ("fp64", "fp32", "bf16"):
        runner = gate_runner("torch-eager", spec, batch, size, precision, upconv="native")
        for task in ("infer", "train"):
            found[(task, precision)] = [runner.outputs(task, seed) for seed in gate.NOISE_SEEDS]
    return found


def gate_check(outputs: dict, references: dict, task: str, precision: str, spec: UNetSpec) -> gate.GateResult:
    """As the sweep does: against torch eager fp32 on the timed batch, within twice torch eager's
    own error in the precision (the largest over the seeded batches)."""
    exact = "fp64" if precision == "fp32" else "fp32"
    start = gate.Start(initial_weights(spec), LEARNING_RATE)
    own = gate.noise(zip(references[(task, precision)], references[(task, exact)], strict=True), spec, start)
    return gate.check(outputs, references[(task, "fp32")][0], own, spec, start)
