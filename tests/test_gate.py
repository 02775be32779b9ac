"""The parity gate against wrong functions: each mutant below is a bug a path could have, and each
must fail the gate, in both precisions, while the paths as they are pass it (test_runners.py;
torch-compile's here, where its zeroed-gradient mutants share its one compile).

Model-level mutants on torch eager, jax and onnxruntime (the exported file holds the mutant);
the other paths' own outputs mutated as the mutant would mutate them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bench import gate
from bench.run_config import framework
from bench.runners import jax_runner, workload
from impls import convert, flax_unet, torch_unet
from impls.spec import UNetSpec
from tests.helpers import GATE_BATCH, GATE_SIZE, GATE_SPEC, gate_check, gate_references, gate_runner

SPEC, SIZE, BATCH = GATE_SPEC, GATE_SIZE, GATE_BATCH
# One tensor of each kind, for the mutants that need a compilation each (jax).
SAMPLED = ("down0.conv1.weight", "down1.norm2.weight", "down2.norm1.bias", "up0.upconv.weight", "head.bias")
TRAINING = [("torch-eager", "fp32"), ("torch-eager", "bf16"), ("jax", "fp32"), ("jax", "bf16")]
# The runtimes export the mutant torch model; the plain paths build the mutants as the others do.
FORWARD = [
    *TRAINING,
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("torch-plain", "fp32"),
    ("jax-plain", "fp32"),
]


@pytest.fixture(scope="module")
def references() -> dict:
    return gate_references(SPEC, BATCH, SIZE)


def _fails(outputs: dict, references: dict, task: str, precision: str) -> gate.GateResult:
    result = gate_check(outputs, references, task, precision, SPEC)
    assert not result.passed, f"a mutant passed the gate: {result.describe()}"
    return result


def _outputs(path: str, task: str, precision: str) -> dict:
    return gate_runner(path, SPEC, BATCH, SIZE, precision, upconv="native").outputs(task)


@functools.cache
def _own_outputs(path: str, task: str, precision: str) -> dict:
    """A path's outputs as it is (no mutant patched in), computed once: a compiled path compiles once
    for every test that reads them. Read only. Its memory format pinned: the same graphs as other
    tests compile on this network (test_runners' TF32 test, test_runtimes' freezing)."""
    return gate_runner(
        path, SPEC, BATCH, SIZE, precision, upconv="native", memory_format="contiguous"
    ).outputs(task)


def _trainable() -> list[str]:
    """Every parameter whose gradient is not 0 by construction."""
    names = [n for n in SPEC.param_shapes() if "running_" not in n]
    return [n for n in names if n not in SPEC.zero_gradient_biases()]


# -- the mutants ------------------------------------------------------------------------------


def _upconv_kernels(weights: dict, change) -> dict:
    return {n: change(v) if n.endswith("upconv.weight") else v for n, v in weights.items()}


UPCONV_MUTANTS = {  # canonical (in, out, kh, kw) kernels, as a conversion could get them wrong
    "spatial axes swapped": lambda k: np.ascontiguousarray(k.transpose(0, 1, 3, 2)),
    "spatial axes flipped": lambda k: np.ascontiguousarray(k[:, :, ::-1, ::-1]),
}


def _torch_dropped_norm(model: torch.nn.Module) -> torch.nn.Module:
    model.down1.norm1.forward = lambda x: x
    return model


def _biased(norm_momentum: float, count: int, before, after):
    """The running variance ``after`` an unbiased update from ``before``, as the biased one would
    have left it: the update's new part scaled by (n - 1) / n. (``norm_momentum``: the weight of the
    batch's variance.)"""
    kept = (1 - norm_momentum) * before
    return kept + (after - kept) * (count - 1) / count


def _torch_biased_variance(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            forward = module.forward

            def biased(x, module=module, forward=forward):
                before = module.running_var.clone()
                y = forward(x)
                if module.training:  # a new tensor: autograd keeps the one the forward used
                    count = x.numel() // x.shape[1]
                    module.running_var = _biased(module.momentum, count, before, module.running_var.detach())
                return y

            module.forward = biased
    return model


def _flax_norm_mutant(monkeypatch, mutation: str) -> None:
    """jax's BatchNorms (the project's and, for jax-plain's forward, Flax's), mutated: down1.norm1
    dropped (marked on every U-Net built, so that the mark is part of the jitted graph), or every
    running variance updated with the biased estimate."""
    for layer in (flax_unet.BatchNorm, nnx.BatchNorm):
        original = layer.__call__

        def call(self, x, original=original):
            if mutation == "dropped":
                return x if getattr(self, "dropped", False) else original(self, x)
            before = self.var[...]
            y = original(self, x)
            if not self.use_running_average:
                self.var[...] = _biased(1 - self.momentum, x.size // x.shape[-1], before, self.var[...])
            return y

        monkeypatch.setattr(layer, "__call__", call)
    if mutation == "dropped":
        build = flax_unet.build

        def marked(*args, **options):
            model = build(*args, **options)
            model.down1.norm1.dropped = True
            return model

        monkeypatch.setattr(flax_unet, "build", marked)


def _torch_model_mutant(monkeypatch, mutate) -> None:
    """Every torch U-Net built from now on (the runner's, the exporter's) ``mutate``d."""
    build = torch_unet.build
    monkeypatch.setattr(torch_unet, "build", lambda *a, **k: mutate(build(*a, **k)))


def _mutant_outputs(monkeypatch, path: str, task: str, precision: str, mutation: str) -> dict:
    if mutation in UPCONV_MUTANTS:
        weights = workload.weights
        change = UPCONV_MUTANTS[mutation]
        monkeypatch.setattr(workload, "weights", lambda config: _upconv_kernels(weights(config), change))
    elif framework(path) == "jax":
        _flax_norm_mutant(monkeypatch, mutation)
    else:
        mutate = _torch_dropped_norm if mutation == "dropped" else _torch_biased_variance
        _torch_model_mutant(monkeypatch, mutate)
    return _outputs(path, task, precision)


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "precision"), FORWARD)
@pytest.mark.parametrize("mutation", ["dropped", *UPCONV_MUTANTS])
def test_a_wrong_forward_fails_the_gate(
    references, monkeypatch, path: str, precision: str, mutation: str
) -> None:
    """One BatchNorm dropped, or the up-conv kernels' spatial axes swapped or flipped."""
    result = _fails(
        _mutant_outputs(monkeypatch, path, "infer", precision, mutation), references, "infer", precision
    )
    assert result.failed[0] == "logits"


@pytest.mark.parametrize(("path", "precision"), TRAINING)
def test_a_biased_running_variance_fails_the_gate(references, monkeypatch, path: str, precision: str) -> None:
    result = _fails(
        _mutant_outputs(monkeypatch, path, "train", precision, "biased"), references, "train", precision
    )
    assert all(n.endswith("running_var") for n in result.failed), result.describe()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_eager_with_any_gradient_zeroed_fails_the_gate(references, precision: str) -> None:
    """Each parameter's gradient in turn zeroed in the backward (a hook), every later tensor
    following from it as it would."""
    runner = gate_runner("torch-eager", SPEC, BATCH, SIZE, precision, upconv="native")
    parameters = dict(runner.model.named_parameters())
    for name in _trainable():
        hook = parameters[name].register_hook(torch.zeros_like)
        try:
            result = _fails(runner.outputs("train"), references, "train", precision)
        finally:
            hook.remove()
        assert f"gradients/{name}" in result.failed, name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", SAMPLED)
def test_jax_with_a_gradient_zeroed_fails_the_gate(
    references, monkeypatch, name: str, precision: str
) -> None:
    """The gradient zeroed inside the jitted step, before Adam sees it."""
    gradients = jax_runner.gradients

    @functools.wraps(gradients)
    def zeroed(*args, **kwargs):
        loss, logits, grads, stats = gradients(*args, **kwargs)
        *modules, leaf = convert._flax_path(name)
        node = functools.reduce(lambda state, key: state[key], modules, grads)
        node[leaf] = jax.tree.map(jnp.zeros_like, node[leaf])
        return loss, logits, grads, stats

    monkeypatch.setattr(jax_runner, "gradients", zeroed)
    result = _fails(_outputs("jax", "train", precision), references, "train", precision)
    assert f"gradients/{name}" in result.failed


@pytest.mark.parametrize(
    ("path", "precision"),
    [("torch-compile", "fp32"), ("torch-plain", "fp32"), ("jax-plain", "fp32"), ("torch-plain", "bf16")],
)
def test_other_paths_with_any_gradient_zeroed_fail_the_gate(references, path: str, precision: str) -> None:
    """A path's own outputs, each gradient in turn zeroed."""
    outputs = _own_outputs(path, "train", precision)
    assert gate_check(outputs, references, "train", precision, SPEC).passed
    for name in _trainable():
        mutant = {
            **outputs,
            "gradients": {**outputs["gradients"], name: np.zeros_like(outputs["gradients"][name])},
        }
        assert f"gradients/{name}" in _fails(mutant, references, "train", precision).failed


@pytest.mark.parametrize("path", ["torch-eager", "jax"])
def test_an_optimizer_that_is_not_the_cases_adam_fails_the_gate(references, path: str) -> None:
    """Adam at twice the case's learning rate: most parameters after the steps are off (and what
    follows from them: the second loss, the running statistics); the first step's outputs are not."""
    runner = gate_runner(path, SPEC, BATCH, SIZE, "fp32", upconv="native", learning_rate=2e-4)
    result = _fails(runner.outputs("train"), references, "train", "fp32")
    assert len([n for n in result.failed if n.startswith("adam/")]) > len(_trainable()) // 2
    assert not [n for n in result.failed if n == "logits" or n.startswith("gradients/")]


def test_torch_compile_passes_the_parity_gate_forward_and_backward(references) -> None:
    """The compiled forward and train step as they are pass (their train step's outputs are the ones
    the zeroed-gradient mutants above are made of)."""
    for task in ("infer", "train"):
        result = gate_check(_own_outputs("torch-compile", task, "fp32"), references, task, "fp32", SPEC)
        assert result.passed, result.describe()


# -- volumes --------------------------------------------------------------------------------------

VOLUME = UNetSpec(dims=3, width=4, depth=2, norm="instance", activation="leaky_relu")
VOLUME_SIDE = 16


@pytest.fixture(scope="module")
def volume_references() -> dict:
    return gate_references(VOLUME, BATCH, VOLUME_SIDE)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("path", ["torch-eager", "torch-plain", "jax", "jax-plain"])
def test_a_volumetric_unet_passes_the_gate_on_every_eager_path(volume_references, path, precision) -> None:
    """Forward and train step of a 3D U-Net (instance norm, leaky ReLU) on a 16^3 batch, each form
    and memory format as measured (channels_last_3d for torch where it wins)."""
    runner = gate_runner(path, VOLUME, BATCH, VOLUME_SIDE, precision)
    for task in ("infer", "train"):
        result = gate_check(runner.outputs(task), volume_references, task, precision, VOLUME)
        assert result.passed, f"{path} {precision} {task}: {result.describe()}"


@pytest.mark.parametrize("path", ["torch-eager", "jax"])
def test_trilinear_upsampling_passes_the_gate_in_bf16(path) -> None:
    """The bilinear up-conv in 3D under bf16: autocast interpolates the 8 neighbours in float32 and
    rounds once; jax.image.resize goes one axis at a time, rounding to bf16 after each
    (docs/methodology.md's precision table): the same function within bf16's own error."""
    spec = dataclasses.replace(VOLUME, upsample="bilinear")
    references = gate_references(spec, BATCH, VOLUME_SIDE)
    runner = gate_runner(path, spec, BATCH, VOLUME_SIDE, "bf16")
    for task in ("infer", "train"):
        result = gate_check(runner.outputs(task), references, task, "bf16", spec)
        assert result.passed, f"{path} bf16 {task}: {result.describe()}"


@pytest.mark.parametrize("path", ["torch-eager", "jax"])
def test_a_volumetric_unet_with_the_wrong_leaky_slope_fails_the_gate(
    volume_references, monkeypatch, path
) -> None:
    """Slope 0.02 where the spec says 0.01: a few percent on the logits, in fp32."""
    module, function = (
        (torch_unet, torch.nn.functional.leaky_relu)
        if path == "torch-eager"
        else (
            flax_unet,
            jax.nn.leaky_relu,
        )
    )
    monkeypatch.setattr(module, "leaky_relu", lambda x: function(x, 0.02))
    runner = gate_runner(path, VOLUME, BATCH, VOLUME_SIDE, "fp32", upconv="native")
    for task in ("infer", "train"):
        result = gate_check(runner.outputs(task), volume_references, task, "fp32", VOLUME)
        assert not result.passed, f"a mutant passed the gate: {result.describe()}"
