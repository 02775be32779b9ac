"""The runners behind the benchmarks: the interface, the parity gate, precision, the plain paths,
the memory format, the run configuration."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from bench import gate
from bench.run_config import calibration_effect, calibration_path, competes, framework
from bench.runners import PATHS, PLAIN_PATHS, RunConfig, form_timing, make_runner, torch_runner
from bench.runners.torch_precision import conv_fp32_precision
from bench.runners.worker import Service
from bench.runners.workload import (
    BATCHNORM_RANGES,
    RUNNING_MEAN_SHIFT,
    RUNNING_VAR_SCALE,
    batchnorm_statistics,
    from_scratch_weights,
    initial_weights,
    workload,
)
from impls import convert, flax_unet, torch_unet
from impls.checks import err
from impls.spec import UNetSpec
from tests.helpers import GATE_BATCH, GATE_SIZE, GATE_SPEC, gate_check, gate_references, gate_runner

SPEC = UNetSpec(width=4, depth=2)
SPEC_RGB = UNetSpec(width=4, depth=2, in_channels=3)  # one channel looks the same in either layout
SIZE, BATCH = 16, 2


def _outputs(path: str, task: str, precision: str = "fp32", upconv: str = "auto") -> dict:
    return gate_runner(path, SPEC, BATCH, SIZE, precision, upconv=upconv).outputs(task)


@pytest.fixture(scope="module")
def references() -> dict:
    return gate_references(SPEC, BATCH, SIZE)


def _check(outputs: dict, references: dict, task: str, precision: str = "fp32") -> gate.GateResult:
    return gate_check(outputs, references, task, precision, SPEC)


@pytest.mark.parametrize("task", ["infer", "train"])
@pytest.mark.parametrize(
    ("path", "precision", "upconv"),
    [
        ("torch-eager", "fp32", "matmul"),
        ("jax", "fp32", "native"),
        ("jax", "fp32", "matmul"),
        ("torch-eager", "bf16", "auto"),
        ("jax", "bf16", "auto"),
        ("torch-plain", "fp32", "matmul"),  # the plain paths ignore upconv: native
        ("jax-plain", "fp32", "matmul"),
        ("torch-plain", "bf16", "auto"),
    ],
)
def test_paths_pass_the_parity_gate(references, path: str, precision: str, upconv: str, task: str) -> None:
    outputs = _outputs(path, task, precision, upconv)
    result = _check(outputs, references, task, precision)
    assert result.passed, result.describe()
    trained = {"logits", "loss", "gradients", "second_gradients", "weights"}
    assert set(outputs) == ({"logits"} if task == "infer" else trained)
    assert outputs["logits"].shape == (BATCH, SPEC.num_classes, SIZE, SIZE)
    if task == "train":
        assert sorted(outputs["gradients"]) == sorted(n for n in SPEC.param_shapes() if "running" not in n)
        assert sorted(outputs["weights"]) == sorted(SPEC.param_shapes())
        # every tensor compared, the weights after the steps but the zero-gradient biases'
        # each gradient, each parameter after the steps (adam/), each running statistic
        statistics = len(SPEC.param_shapes()) - len(outputs["gradients"])
        assert len(result.errors) == 2 + 2 * len(outputs["gradients"]) + statistics
    # bf16 has its own, larger allowances, set by torch eager's own bf16 error
    assert (result.allowed["logits"] > gate.FP32_TOLERANCE) == (precision == "bf16")


def test_a_wrong_path_fails_the_gate(references, monkeypatch) -> None:
    """JAX given the transposed-conv kernels without their flip: the known trap, caught."""
    right = convert._to_flax_layout

    def unflipped(name, array, spec):
        return array.transpose(2, 3, 0, 1) if name.endswith("upconv.weight") else right(name, array, spec)

    monkeypatch.setattr(convert, "_to_flax_layout", unflipped)
    result = _check(_outputs("jax", "infer", upconv="native"), references, "infer")
    assert not result.passed
    assert result.errors["logits"] > 10 * gate.FP32_TOLERANCE


def test_the_gate_weights_batchnorm_as_a_trained_network_would() -> None:
    """Every BatchNorm's affine parameters drawn from their ranges, its running statistics those of
    its input (as measured in train mode) moved by a draw from theirs; none at PyTorch's 1, 0, 0,
    1; the convolutions PyTorch's own initialisation."""
    weights = initial_weights(SPEC)
    norms = [n for n in weights if ".norm" in n]
    assert len(norms) == 4 * 2 * (2 * SPEC.depth + 1)
    measured = batchnorm_statistics(SPEC, weights)
    assert len(measured) == len(norms) // 4
    for name in norms:
        module, leaf = name.rsplit(".", 1)
        mean, var = measured[module]
        drawn = {
            "weight": weights[name],
            "bias": weights[name],
            "running_mean": (weights[name] - mean) / np.sqrt(var),
            "running_var": weights[name] / var,
        }[leaf]
        low, high = {
            **BATCHNORM_RANGES,
            "running_mean": RUNNING_MEAN_SHIFT,
            "running_var": RUNNING_VAR_SCALE,
        }[leaf]
        assert low - 1e-5 <= drawn.min() and drawn.max() <= high + 1e-5, name
        assert np.unique(weights[name]).size == weights[name].size, name
    default = from_scratch_weights(SPEC)
    assert all(np.array_equal(weights[n], default[n]) for n in weights if ".norm" not in n)


def test_a_network_without_its_batchnorms_fails_the_gate(references) -> None:
    """The same convolutions with every BatchNorm removed: the forward that inference-mode
    BatchNorm at PyTorch's default statistics (the identity) would have let through."""
    without = dataclasses.replace(SPEC, norm="none")
    weights = {n: v for n, v in initial_weights(SPEC).items() if ".norm" not in n}
    model = convert.to_torch(weights, torch_unet.build(without)).eval()
    images = workload(RunConfig("torch-eager", SPEC, SIZE, BATCH)).images
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    result = _check({"logits": logits}, references, "infer")
    assert not result.passed
    assert result.errors["logits"] > 100 * gate.FP32_TOLERANCE


def test_a_volumetric_case_has_its_own_id_group_and_workload() -> None:
    volume = dataclasses.replace(SPEC, dims=3, norm="instance")
    config = RunConfig("jax", volume, 16, BATCH)
    assert config.id == "train-jax-16vox-b2-fp32" and config.group == "train 16vox b2 fp32 cpu"
    work = workload(config)
    assert work.images.shape == (BATCH, 1, 16, 16, 16) and work.labels.shape == (BATCH, 16, 16, 16)
    assert work.pixel_weights.shape == (BATCH, 16, 16, 16) and work.pixel_weights.max() > 2
    with pytest.raises(ValueError, match="depth 18 is not a valid input size"):
        RunConfig("jax", volume, 18, BATCH)


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
    # test_gate's network and forms: with TF32 off, torch-compile's train step is the one compiled there
    gate_case = dict(batch=GATE_BATCH, size=GATE_SIZE, upconv="native", memory_format="contiguous")
    runner = make_runner(path, GATE_SPEC, precision="fp32", device=device, tf32=tf32, **gate_case)
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
        (dict(memory_format="nhwc"), "memory_format 'nhwc': expected one of auto, channels_last, contiguous"),
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
    pinned = config.replace(upconv="matmul", memory_format="contiguous")  # how, not which case
    assert (pinned.id, pinned.group) == (config.id, config.group)
    assert RunConfig.from_json(pinned.to_json()).memory_format == "contiguous"
    with pytest.raises(ValueError, match="unknown fields"):
        RunConfig.from_json(config.to_json().replace('"loss"', '"los"'))
    with pytest.raises(ValueError, match="batch 3 must split evenly over 2 devices"):
        config.replace(batch=3)


def test_a_decaying_rate_is_recorded_only_where_it_is_asked_for() -> None:
    """Left out of the record at its default: every key and record written before it stays as it was."""
    config = RunConfig("jax", SPEC, SIZE, BATCH)
    assert "learning_rate_decay_steps" not in config.to_dict()
    decaying = config.replace(learning_rate_decay_steps=300)
    assert decaying.to_dict()["learning_rate_decay_steps"] == 300
    assert RunConfig.from_json(decaying.to_json()) == decaying
    with pytest.raises(ValueError, match="learning_rate_decay_steps 0: expected a whole number >= 1"):
        config.replace(learning_rate_decay_steps=0)


def test_the_learning_rate_decays_alike_in_every_framework() -> None:
    """nnU-Net's poly decay over 3 steps, then 0: the same losses in each path, none after the
    third step moves the weights (and none turns them to NaN), compiled without recompiling, and
    reset_state starts the decay over. (test_gate's network and forms: its compiled forward and
    backward come from inductor's cache.)"""
    images = np.random.default_rng(0).normal(size=(GATE_BATCH, 1, GATE_SIZE, GATE_SIZE)).astype(np.float32)
    labels = (images[:, 0] > 0).astype(np.int64)
    forms = dict(upconv="native", memory_format="contiguous", learning_rate=1e-2)
    constant = gate_runner("torch-eager", GATE_SPEC, GATE_BATCH, GATE_SIZE, **forms)
    constant_losses = [constant.fit(images, labels) for _ in range(3)]
    losses = {}
    for path in ("torch-eager", "torch-compile", "jax"):
        runner = gate_runner(path, GATE_SPEC, GATE_BATCH, GATE_SIZE, **forms, learning_rate_decay_steps=3)
        losses[path] = [runner.fit(images, labels) for _ in range(6)]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        runner.reset_state()
        assert [runner.fit(images, labels) for _ in range(3)] == pytest.approx(losses[path][:3], rel=1e-6)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
        assert "poly decay to 0 over 3 steps (power 0.9)" in runner.settings["optimizer"]
    eager = losses["torch-eager"]
    assert eager[:2] == pytest.approx(constant_losses[:2], rel=1e-6)  # the first steps at the full rate
    assert eager[2] > constant_losses[2] * (1 + 1e-3)  # the third at a decayed one
    assert np.isfinite(eager).all() and eager[3:] == pytest.approx([eager[3]] * 3, rel=1e-6)
    for path in ("torch-compile", "jax"):
        assert losses[path] == pytest.approx(eager, rel=1e-5), path


def test_a_whole_input_tasks_first_call_is_its_tile_forwards_compile() -> None:
    """A whole image's call varies by more than a compile takes: its first call is timed on the
    tile forward, the first less the second, so that a compile reads as one and a compiled one as
    none (the "window" run that read a cold JAX compile of 0 s and a cached one of 0.2 s)."""
    runner = make_runner(
        "jax", SPEC, batch=BATCH, size=SIZE, precision="fp32", device="cpu", task="tiled", image_size=64
    )
    service = Service(runner.config, runner)
    compiling, compiled = service.first_call(), service.first_call()
    assert compiling > 0.02 and abs(compiled) < compiling / 10, (compiling, compiled)


# -- the calibration paths ----------------------------------------------------


def test_a_calibration_path_adds_timed_real_work_and_computes_what_torch_eager_does() -> None:
    """torch-eager+N%: its slices of extra work are counted by timing them against the call (or
    given), timed on every call, and change nothing the parity gate sees."""
    pinned = {"upconv": "native", "memory_format": "contiguous", "task": "train"}
    common = dict(batch=BATCH, size=SIZE, precision="fp32", device="cpu", **pinned)
    timed = make_runner("torch-eager+50%", SPEC, **common)
    assert timed.settings["calibration_repeats"] >= 1
    assert "call" in timed.settings["calibration_repeats_seconds"]
    given = make_runner("torch-eager+50%", SPEC, calibration_repeats=3, **common)
    assert (given.settings["calibration_repeats"], given.settings["calibration_repeats_seconds"]) == (3, None)
    given.train_step()
    given.train_step()
    extra = given.settings["calibration"]["extra_seconds"]
    assert len(extra) == 2 and min(extra) > 0 and given.settings["calibration"]["effect"] == 0.5
    eager = make_runner("torch-eager", SPEC, **common)
    other = gate.flatten(timed.outputs("train"))
    for name, value in gate.flatten(eager.outputs("train")).items():
        np.testing.assert_array_equal(value, other[name], err_msg=name)
    assert make_runner("torch-eager+0%", SPEC, **common).settings["calibration_repeats"] == 0


def test_calibration_paths_are_named_by_their_effect() -> None:
    assert calibration_path(10) == "torch-eager+10%" and calibration_effect("torch-eager+10%") == 0.1
    assert calibration_effect("torch-eager") is None and calibration_effect("torch-eager+10") is None
    assert (
        framework("torch-eager+5%") == "torch"
        and not competes("torch-eager+5%")
        and not competes("jax-plain")
    )
    with pytest.raises(ValueError, match="or torch-eager\\+N% \\(calibration\\)"):
        RunConfig("torch-eagre", SPEC, SIZE, BATCH)
    with pytest.raises(ValueError, match="calibration_repeats -1: expected 'auto' or a count >= 0"):
        RunConfig("torch-eager+5%", SPEC, SIZE, BATCH, calibration_repeats=-1)


# -- the plain paths ----------------------------------------------------------


def test_the_plain_paths_are_paths_of_their_frameworks() -> None:
    assert set(PLAIN_PATHS) <= set(PATHS)
    assert [framework(path) for path in PLAIN_PATHS] == ["torch", "jax"]


def test_torch_plain_uses_pytorchs_defaults() -> None:
    """Whatever the case pins: NCHW, nn.ConvTranspose2d, Adam's defaults, no cuDNN autotuner."""
    runner = make_runner(
        "torch-plain", SPEC_RGB, batch=BATCH, size=SIZE, precision="fp32", device="cpu", upconv="matmul"
    )
    settings = runner.settings
    assert settings["style"].startswith("plain: NCHW contiguous")
    assert (settings["memory_format"], settings["memory_format_seconds"]) == ("contiguous", None)
    assert (settings["upconv"], settings["compile"], settings["cudnn.benchmark"]) == (
        "native",
        "eager",
        False,
    )
    assert settings["optimizer"] == "torch.optim.Adam(lr=0.0001)"
    assert type(runner.model.up0.upconv) is torch.nn.ConvTranspose2d
    assert (runner.optimizer.defaults["fused"], runner.optimizer.defaults["foreach"]) == (None, None)
    for tensor in (runner.model.down1.conv1.weight, runner.images):
        assert tensor.is_contiguous() and not tensor.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("path", "donated"), [("jax", True), ("jax-plain", False)])
def test_jax_plain_donates_nothing(path: str, donated: bool) -> None:
    runner = make_runner(path, SPEC, batch=BATCH, size=SIZE, precision="fp32", device="cpu", upconv="matmul")
    before = runner.params
    runner.train_step()
    assert any(leaf.is_deleted() for leaf in jax.tree.leaves(before)) == donated
    assert runner.settings["upconv"] == ("native" if path == "jax-plain" else "matmul")
    assert runner.settings["style"].startswith("plain" if path == "jax-plain" else "tuned")
    assert runner.settings["memory_format"] == "NHWC (XLA chooses layouts)"


@pytest.mark.parametrize(
    ("path", "layers", "norm"),
    [
        ("jax", flax_unet.PROJECT_LAYERS, flax_unet.BatchNorm),
        ("jax-plain", flax_unet.FLAX_LAYERS, nnx.BatchNorm),
    ],
)
def test_jax_plain_infers_through_flaxs_own_layers(path: str, layers: flax_unet.Layers, norm: type) -> None:
    """jax-plain's forward is a plainly written NNX U-Net (nnx.Conv, nnx.BatchNorm); its training
    step is the project's, whose BatchNorm trains PyTorch's function."""
    # the up-conv form pinned: "auto" measures the two forms and may pick the matmul one
    runner = make_runner(
        path, SPEC, batch=BATCH, size=SIZE, precision="fp32", device="cpu", task="infer", upconv="native"
    )
    forward = nnx.merge(runner._eval_def, runner.params, runner.stats)
    trained = nnx.merge(runner._train_def, runner.params, runner.stats)
    assert (type(forward.down1.norm1), type(forward.down1.conv1)) == (norm, layers.conv)
    assert type(forward.up0.upconv) is layers.conv_transpose and type(forward.head) is layers.conv
    assert type(trained.down1.norm1) is flax_unet.BatchNorm and forward.down1.norm1.use_running_average


@pytest.mark.parametrize("path", PLAIN_PATHS)
def test_a_standalone_worker_runs_a_plain_path(tmp_path, path: str) -> None:
    config = RunConfig(path, SPEC, SIZE, BATCH)
    arguments = {**json.loads(config.to_json()), "steps": 2, "out": str(tmp_path / "run.json")}
    command = [sys.executable, "-m", "bench.runners.worker", json.dumps(arguments)]
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["config"]["path"] == path and len(summary["step_seconds"]) == 2
    assert summary["settings"]["style"].startswith("plain")


# -- the memory format ----------------------------------------------------------


def _torch_runner(**options) -> torch_runner.TorchRunner:
    return make_runner(
        "torch-eager", SPEC_RGB, batch=BATCH, size=SIZE, precision="fp32", device="cpu", **options
    )


@pytest.mark.parametrize("task", ["train", "infer"])
def test_memory_format_auto_takes_the_faster_whole_step_on_throw_away_runners(task: str) -> None:
    runner = _torch_runner(task=task)
    seconds = runner.settings["memory_format_seconds"]
    assert set(seconds) == {"channels_last", "contiguous"} and min(seconds.values()) > 0
    assert runner.settings["memory_format"] == form_timing.fastest(seconds)
    assert runner.settings["memory_format_timed"].startswith("eager whole step")
    # the case's own model and optimizer never saw the timing
    assert not runner.optimizer.state
    initial = workload(runner.config).weights
    assert all(np.array_equal(value, initial[name]) for name, value in runner.weights().items())


@pytest.mark.parametrize(
    ("memory_format", "timed", "chosen"),
    [
        ("auto", {"channels_last": 1.0, "contiguous": 2.0}, "channels_last"),
        ("auto", {"channels_last": 2.0, "contiguous": 1.0}, "contiguous"),
        ("channels_last", None, "channels_last"),
        ("contiguous", None, "contiguous"),
    ],
)
def test_the_model_and_batch_are_in_the_chosen_memory_format(
    monkeypatch, memory_format: str, timed: dict | None, chosen: str
) -> None:
    """A pinned format is used as it is, untimed: later workers of a case compile the same graph."""

    def untimed(config: RunConfig) -> dict[str, float]:
        raise AssertionError("a pinned memory format was timed")

    monkeypatch.setattr(torch_runner, "time_memory_formats", untimed if timed is None else lambda _: timed)
    runner = _torch_runner(memory_format=memory_format)
    assert (runner.settings["memory_format"], runner.settings["memory_format_seconds"]) == (chosen, timed)
    channels_last = chosen == "channels_last"
    for tensor in (runner.model.down1.conv1.weight, runner.model.up0.conv2.weight, runner.images):
        assert tensor.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert tensor.is_contiguous() != channels_last
    # the parity gate's fp64 twin takes the same format, untimed
    monkeypatch.setattr(torch_runner, "time_memory_formats", untimed)
    twin = Service(runner.config, runner).outputs_in("fp64", "infer")
    assert twin["logits"].dtype == np.float32 and twin["logits"].shape[0] == BATCH


def test_a_workers_twins_in_other_formats_and_precisions_are_built_once_each(monkeypatch) -> None:
    """The parity gate's references come from one worker: each twin (a memory format, a precision)
    is built at its first call and kept; the worker's own case is its own runner."""
    import bench.runners

    runner = _torch_runner(memory_format="contiguous")
    service = Service(runner.config, runner)
    built = []
    real = bench.runners.build
    monkeypatch.setattr(bench.runners, "build", lambda config, *a: built.append(config) or real(config, *a))
    own = service.outputs_in("fp32", "infer", 1, "contiguous")["logits"]
    assert np.array_equal(own, runner.outputs("infer", 1)["logits"]) and built == []
    for seed in (0, 1):
        other = service.outputs_in("fp32", "infer", seed, "channels_last")["logits"]
        exact = service.outputs_in("fp64", "infer", seed, "channels_last")["logits"]
    assert err(other, own) < 1e-5 and err(exact, own) < 1e-5
    assert [(c.precision, c.memory_format) for c in built] == [
        ("fp32", "channels_last"),
        ("fp64", "channels_last"),
    ]
    with pytest.raises(ValueError, match="'bf16' next to 'fp32' with tf32 off only"):
        Service(runner.config.replace(tf32=True), runner).outputs_in("bf16", "infer")


def test_time_forms_takes_turns_and_keeps_each_forms_best(monkeypatch) -> None:
    """One warm-up call per form, then A B A B ...: drift falls on every form alike."""
    clock = SimpleNamespace(now=0.0, calls=[])
    durations = {"a": iter([9.0, 3.0, 1.0, 2.0]), "b": iter([9.0, 5.0, 6.0, 4.0])}

    def form(name: str):
        def run() -> None:
            clock.calls.append(name)
            clock.now += next(durations[name])

        return run

    monkeypatch.setattr(form_timing, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    seconds = form_timing.time_forms({"a": form("a"), "b": form("b")})
    assert clock.calls == ["a", "b"] * (form_timing.WARM_UP + form_timing.REPEATS)
    assert seconds == {"a": 1.0, "b": 4.0}
    assert form_timing.fastest(seconds) == "a"


@pytest.mark.parametrize("backward", [False, True])
def test_up_conv_forms_are_timed_as_the_path_runs_them(monkeypatch, backward: bool) -> None:
    """Compiled where the path compiles (each form through torch.compile in its warm-up call), with a
    backward only where the case trains."""
    modes: list[str | None] = []
    real_compile = torch.compile

    def compile_(module, mode=None):
        modes.append(mode)
        return real_compile(module, mode=mode)

    monkeypatch.setattr(torch, "compile", compile_)
    time_forms = torch_runner.time_upconv_forms.__wrapped__  # not the cache other tests filled
    for compile_mode in ("default", None):
        timing = torch_runner.UpconvTiming(SPEC, BATCH, SIZE, backward, compile_mode)
        seconds = time_forms(timing, torch.device("cpu"), None)
        assert set(seconds) == {"native", "matmul"} and all(s > 0 for s in seconds.values())
    assert modes == ["default", "default"]  # one compile per form; eager compiled nothing
