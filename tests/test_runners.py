"""The runners behind the benchmarks: the interface, the parity gate, precision, the run configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import gate
from bench.runners import RunConfig, make_runner
from bench.runners.torch_runner import conv_fp32_precision
from impls import convert
from impls.spec import UNetSpec

SPEC = UNetSpec(width=4, depth=2)
SIZE, BATCH = 16, 2


def _outputs(path: str, task: str, precision: str = "fp32", upconv: str = "auto") -> dict:
    runner = make_runner(path, SPEC, batch=BATCH, size=SIZE, precision=precision, device="cpu", upconv=upconv)
    return runner.outputs(task)


@pytest.fixture(scope="module")
def references() -> dict:
    """torch eager fp64, fp32 and bf16 outputs, per task."""
    return {
        (task, precision): _outputs("torch-eager", task, precision, upconv="native")
        for task in ("infer", "train")
        for precision in ("fp64", "fp32", "bf16")
    }


def _check(outputs: dict, references: dict, task: str, precision: str = "fp32") -> gate.GateResult:
    """As the sweep does: against torch eager fp32, within twice its own error in the precision."""
    if precision == "fp32":
        own = gate.noise(references[(task, "fp32")], references[(task, "fp64")], low_precision=False)
    else:
        own = gate.noise(references[(task, precision)], references[(task, "fp32")], low_precision=True)
    return gate.check(outputs, references[(task, "fp32")], own)


@pytest.mark.parametrize("task", ["infer", "train"])
@pytest.mark.parametrize(
    ("path", "precision", "upconv"),
    [
        ("torch-eager", "fp32", "matmul"),
        ("jax", "fp32", "native"),
        ("jax", "fp32", "matmul"),
        ("torch-eager", "bf16", "auto"),
        ("jax", "bf16", "auto"),
    ],
)
def test_paths_pass_the_parity_gate(references, path: str, precision: str, upconv: str, task: str) -> None:
    outputs = _outputs(path, task, precision, upconv)
    result = _check(outputs, references, task, precision)
    assert result.passed, result.describe()
    assert set(outputs) == ({"logits"} if task == "infer" else {"logits", "loss", "gradients"})
    assert outputs["logits"].shape == (BATCH, SPEC.num_classes, SIZE, SIZE)
    if task == "train":
        assert sorted(outputs["gradients"]) == sorted(n for n in SPEC.param_shapes() if "running" not in n)
        # bf16 has its own, larger allowance, set by torch eager's own bf16 error
        assert (result.allowed["gradients"] > gate.FP32_TOLERANCE) == (precision == "bf16")


def test_torch_compile_passes_the_parity_gate_forward_and_backward(references) -> None:
    for task in ("infer", "train"):
        result = _check(_outputs("torch-compile", task), references, task)
        assert result.passed, result.describe()


def test_a_wrong_path_fails_the_gate(references, monkeypatch) -> None:
    """JAX given the transposed-conv kernels without their flip: the known trap, caught."""
    right = convert._to_flax_layout

    def unflipped(name, array, spec):
        return array.transpose(2, 3, 0, 1) if name.endswith("upconv.weight") else right(name, array, spec)

    monkeypatch.setattr(convert, "_to_flax_layout", unflipped)
    result = _check(_outputs("jax", "infer", upconv="native"), references, "infer")
    assert not result.passed
    assert result.errors["logits"] > 10 * gate.FP32_TOLERANCE


def test_a_wrong_backward_fails_the_gate(references) -> None:
    """The gate reads the gradients: the largest gradient off by 1% fails it."""
    outputs = _outputs("torch-eager", "train")
    gradients = outputs["gradients"]
    largest = max(gradients, key=lambda name: np.abs(gradients[name]).max())
    gradients[largest] = gradients[largest] * 1.01
    result = _check(outputs, references, "train")
    assert not result.passed
    assert result.errors["gradients"] == pytest.approx(0.01, rel=1e-3)


def test_train_step_trains_and_infer_does_not() -> None:
    runner = make_runner("jax", SPEC, batch=BATCH, size=SIZE, precision="fp32", device="cpu")
    before = runner.outputs("infer")["logits"]
    runner.infer()
    runner.infer()
    assert np.array_equal(runner.outputs("infer")["logits"], before)
    losses = runner.outputs("train")["loss"]
    assert losses[1] < losses[0]  # one Adam step on the same batch lowers its loss


@pytest.mark.parametrize("device", ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
@pytest.mark.parametrize("path", ["torch-eager", "torch-compile"])
@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_inside_the_backward_is_what_was_asked_for(path: str, tf32: bool, device: str) -> None:
    """Read from a hook on a conv weight's gradient, which runs inside the backward pass (compiled,
    for torch-compile): the precision is set for the whole process, not around the forward.
    (On a CPU the flags act on nothing, but they are set and read the same way.)"""
    runner = make_runner(path, SPEC, batch=BATCH, size=SIZE, precision="fp32", device=device, tf32=tf32)
    seen = []

    def hook(grad: torch.Tensor) -> torch.Tensor:
        seen.append(conv_fp32_precision())
        return grad

    runner.model.down0.conv1.weight.register_hook(hook)
    runner.train_step()
    assert seen == ["tf32" if tf32 else "ieee"]
    assert runner.settings["fp32_precision"].endswith("tf32" if tf32 else "ieee")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(path="mxnet"), "path 'mxnet': expected one of torch-eager"),
        (dict(precision="fp16"), "precision 'fp16': expected one of fp32, bf16"),
        (dict(device="tpu"), "device 'tpu'"),
        (dict(path="torch-compile-reduce-overhead"), "needs a CUDA device"),
        (dict(size=18), "height 18 is not a valid input size .* nearest valid: 16 and 20"),
        (dict(upconv="fft"), "upconv 'fft'"),
        (dict(batch=0), "batch 0: expected a whole number >= 1"),
        (dict(task="tiled"), "task 'tiled' needs image_size"),
        (dict(devices=2), "runs in worker processes"),
    ],
)
def test_make_runner_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    args = dict(path="torch-eager", batch=BATCH, size=SIZE, precision="fp32", device="cpu") | kwargs
    with pytest.raises(ValueError, match=match):
        make_runner(args.pop("path"), SPEC, **args)


def test_run_config_round_trips_through_json() -> None:
    config = RunConfig("jax", SPEC, SIZE, 4, precision="bf16", task="tiled", image_size=64, devices=2)
    assert RunConfig.from_json(config.to_json()) == config
    assert config.id == "tiled-jax-16px-b4-bf16-2dev"
    assert config.replace(scaling="weak").id == "tiled-jax-16px-b4-bf16-weak-2dev"
    with pytest.raises(ValueError, match="unknown fields"):
        RunConfig.from_json(config.to_json().replace('"loss"', '"los"'))
    with pytest.raises(ValueError, match="batch 3 must split evenly over 2 devices"):
        config.replace(batch=3)
