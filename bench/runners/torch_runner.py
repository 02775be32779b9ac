"""PyTorch paths: eager, torch.compile of the whole step in its modes, and torch-plain (eager,
written as PyTorch's tutorials write it)."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench import memory
from bench.run_config import (
    ADAM_BETAS,
    ADAM_EPS,
    POLY_POWER,
    RunConfig,
    calibration_effect,
    freezing_applies,
)
from bench.runners import form_timing
from bench.runners.calibration_load import CalibrationLoad
from bench.runners.styles import SingleDevice, style
from bench.runners.torch_precision import conv_fp32_precision, set_precision
from bench.runners.workload import SEED, batch, workload
from impls import convert, torch_unet
from impls.spec import UNetSpec

COMPILE_MODES = {
    "torch-compile": "default",
    "torch-compile-max-autotune": "max-autotune",
    "torch-compile-reduce-overhead": "reduce-overhead",
}
# Each memory format's torch layout, for maps of 2 and 3 spatial axes.
TORCH_MEMORY_FORMATS = {
    "channels_last": {2: torch.channels_last, 3: torch.channels_last_3d},
    "contiguous": {2: torch.contiguous_format, 3: torch.contiguous_format},
}


MEMORY_FORMAT_TIMED = "eager whole step (train step or forward), on throw-away runners, formats interleaved"
PEAK_AFTER_TIMING = "; reset after the memory-format timing (throw-away runners)"


def use_cudnn_autotuner(config: RunConfig, cuda: bool) -> bool:
    """cuDNN's autotuner (cudnn.benchmark) where its search is short: TF32 and bf16 on CUDA.

    In IEEE fp32 its search never ended in time: the first training step of the full U-Net at
    512 px, batch 8 ran past 150 s on an H100 (torch 2.11, cuDNN 9.19), against 0.78 s for the
    first step and 0.39 s for the next without it (and 15 s, then 0.07 s, with it in TF32).
    """
    return cuda and (config.tf32 or config.precision == "bf16")


PLAIN_STYLE = (
    "plain: NCHW contiguous, nn.ConvTranspose2d, F.cross_entropy, torch.optim.Adam's defaults "
    "(foreach on CUDA, a loop on CPU), no cuDNN autotuner"
)
TUNED_STYLE = (
    "tuned: up-conv form and memory format measured (unless given), fused Adam on eager paths, "
    "cuDNN autotuner where its search is short"
)


class TorchRunner:
    def __init__(self, config: RunConfig, placement: Any = None) -> None:
        self.config = config
        self.placement = placement or SingleDevice(torch.device(config.device))
        self.device = self.placement.device
        self.cuda = self.device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        self.style = style(config, PLAIN_STYLE, TUNED_STYLE)
        # fused Adam is the fastest eager optimizer on CPU and CUDA; inductor fuses its own.
        self.adam = {} if self.style.plain else {"fused": config.path not in COMPILE_MODES}
        set_precision(config.tf32)
        torch.backends.cudnn.benchmark = not self.style.plain and use_cudnn_autotuner(config, self.cuda)
        self.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None
        dtype = torch.float64 if config.precision == "fp64" else torch.float32
        self.work = workload(config)
        images = self.placement.shard(self.work.images)
        self.compile_mode = COMPILE_MODES.get(config.path)
        self._upconv_timing = UpconvTiming(
            config.spec, len(images), config.size, config.task == "train", self.compile_mode
        )
        upconv, upconv_seconds = self.style.upconv, None
        if upconv == "auto" and self.compile_mode is None:
            upconv_seconds = self.upconv_forms()
            upconv = form_timing.fastest(upconv_seconds)
        elif upconv == "auto":
            # A compiled path's forms are timed compiled, after its cold first call (upconv_forms,
            # bench/sweep/cold.py): compiling them first would warm inductor and shorten that figure.
            upconv = "native"
        memory_format, memory_format_seconds = self._memory_format(upconv, len(images))
        self.memory_format = TORCH_MEMORY_FORMATS[memory_format][config.spec.dims]

        self.model = torch_unet.build(config.spec, dtype, upconv_matmul=upconv == "matmul")
        convert.to_torch(self.work.weights, self.model)
        self.model.to(self.device, memory_format=self.memory_format)
        self.net = self.placement.wrap(self.model)
        if self.compile_mode is not None or config.task == "train":
            _ = self.optimizer  # made now, before any compiled code refers to it
        self._input_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.images, self.labels, self.pixel_weights = self._device_batch(
            self.work.images, self.work.labels, self.work.pixel_weights
        )
        # Built without freezing where it is to be measured (freezing_forms, after the cold call).
        self.freezing = config.freezing if config.freezing != "auto" else "off"
        self._train, self._infer = self._train_fn, self._infer_fn
        if self.compile_mode is not None:
            self._train = torch.compile(self._train_fn, mode=self.compile_mode)
            self._infer = self._compiled_infer(self.freezing == "on")
        self.load = None  # the calibration load's own timing calls the bare step
        self.load = self._calibration_load(len(images), memory_format)
        peak_method = (
            "torch.cuda.max_memory_allocated since the worker started" if self.cuda else memory.CPU_METHOD
        )
        self.settings = {
            "framework": "torch",
            "style": self.style.description,
            "compile": f"torch.compile(mode={self.compile_mode!r}) of the whole step: forward, loss, "
            "backward (AOTAutograd), Adam"
            if self.compile_mode
            else "eager",
            "autocast": "bfloat16" if self.autocast_dtype else None,
            "tf32": config.tf32 and self.cuda,
            "fp32_precision": "process-wide: " + conv_fp32_precision(),
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "memory_format": memory_format,
            "memory_format_seconds": memory_format_seconds,
            "memory_format_timed": MEMORY_FORMAT_TIMED if memory_format_seconds else None,
            "optimizer": f"torch.optim.Adam(lr={config.learning_rate}"
            + "".join(f", {k}={v}" for k, v in self.adam.items())
            + ")"
            + config.decay_description,
            "loss": config.loss,
            "upconv": upconv,
            "upconv_seconds": upconv_seconds,
            **({"freezing": self.freezing, "freezing_seconds": None} if freezing_applies(config) else {}),
            **(self.load.settings if self.load else {}),
            "threads": torch.get_num_threads(),
            "memory": peak_method + (PEAK_AFTER_TIMING if memory_format_seconds else ""),
            **self.placement.settings,
        }

    def _calibration_load(self, batch: int, memory_format: str) -> CalibrationLoad | None:
        """A calibration path's extra work, its repeats as given or timed here against the call."""
        effect = calibration_effect(self.config.path)
        if effect is None:
            return None
        layout = TORCH_MEMORY_FORMATS[memory_format][2]  # its load is a 2D conv
        load = CalibrationLoad(self.config, batch, self.device, layout, self._autocast)
        repeats = self.config.calibration_repeats
        if repeats == "auto":
            call = self._train_once if self.config.task == "train" else self.infer
            repeats, load.timed = load.repeats_for(effect, call)
            self.reset_state()  # the timed train steps moved the weights
        load.repeats = repeats
        return load

    def upconv_forms(self) -> dict[str, float]:
        """Seconds for the largest up-conv in each exact form, as this case runs it: compiled where
        the path compiles, with its backward where the case trains."""
        return time_upconv_forms(self._upconv_timing, self.device, self.autocast_dtype)

    def _compiled_infer(self, freezing: bool) -> Callable:
        """The forward compiled in the path's mode, or with inductor's freezing (the weights folded
        in as constants: a compiled forward then never sees ``reset_state``; inference changes no
        weight). torch.compile takes a mode or options, not both: freezing runs in the default mode."""
        if freezing:
            return torch.compile(self._infer_fn, options={"freezing": True})
        return torch.compile(self._infer_fn, mode=self.compile_mode)

    def freezing_forms(self) -> dict[str, float]:
        """Seconds of the case's compiled forward with inductor's freezing on and off, each its own
        compile (the one built is reused), timed in turn."""
        self._mode(False)
        compiled = {"on": None, "off": None, self.freezing: self._infer}
        runs = {}
        for form, infer in compiled.items():
            infer = infer or self._compiled_infer(form == "on")
            runs[form] = functools.partial(self._infer_once, infer)
        return form_timing.time_forms(runs)

    def _infer_once(self, infer: Callable) -> None:
        infer(self.images)
        self._sync()

    def _memory_format(self, upconv: str, batch: int) -> tuple[str, dict[str, float] | None]:
        """The style's memory format, or the faster measured (and its seconds per format)."""
        if self.style.memory_format != "auto":
            return self.style.memory_format, None
        # Eager for every path: timing each format compiled would cost a whole compile each.
        eager = self.config.replace(
            path="torch-eager", upconv=upconv, devices=None, scaling=None, batch=batch
        )
        seconds = time_memory_formats(eager)
        self.reset_peak_memory()  # the throw-away runners' memory is no part of the case's peak
        return self.placement.agree(form_timing.fastest(seconds)), seconds

    # -- the step functions; compiled whole when the path compiles --------------

    @functools.cached_property
    def optimizer(self) -> torch.optim.Adam:
        """The case's Adam, made at first use on an eager path that infers: torch.optim's first
        Adam imports torch._dynamo, 1.6 s of such a worker's start here, for a step it never takes."""
        config = self.config
        # A decaying rate is a tensor, so that compiled steps take each step's rate without recompiling.
        rate = config.learning_rate
        if config.learning_rate_decay_steps:
            rate = torch.tensor(rate)
        return torch.optim.Adam(self.model.parameters(), lr=rate, betas=ADAM_BETAS, eps=ADAM_EPS, **self.adam)

    @functools.cached_property
    def lr_decay(self) -> torch.optim.lr_scheduler.PolynomialLR | None:
        """The learning rate's poly decay, stepped after each train step; None where it is constant."""
        steps = self.config.learning_rate_decay_steps
        if steps is None:
            return None
        return torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=steps, power=POLY_POWER)

    def _step(self, images, labels, pixel_weights) -> tuple[torch.Tensor, torch.Tensor]:
        """One train step (compiled where the path compiles), then the learning rate's decay."""
        decay = self.lr_decay  # made before the step it follows: it wraps the optimizer's step to count it
        result = self._train(images, labels, pixel_weights)
        if decay is not None:
            decay.step()
        return result

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _train_fn(self, images, labels, pixel_weights) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.net(images)
        loss = torch_unet.weighted_cross_entropy(logits, labels, pixel_weights)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    @torch.no_grad()
    def _infer_fn(self, images: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.net(images)

    # -- the interface --------------------------------------------------------

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        maps = tensor.ndim == self.config.spec.dims + 2  # images, not labels or pixel weights
        return tensor.to(memory_format=self.memory_format) if maps else tensor

    def _device_batch(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> tuple:
        """A host batch as the step takes it: this rank's share, on the device, in the step's dtypes
        (no pixel weights unless the loss is weighted)."""
        shard = self.placement.shard
        return (
            self._to_device(shard(images).astype(self._input_dtype)),
            self._to_device(shard(labels).astype(np.int64)),
            self._to_device(shard(pixel_weights).astype(self._input_dtype))
            if self.config.loss == "weighted"
            else None,
        )

    def _mode(self, training: bool) -> None:
        if self.net.training != training:  # a walk over every module: not on every call
            self.net.train(training)

    def infer(self) -> None:
        self._mode(False)
        self._infer_once(self._infer)
        if self.load:
            self.load.run()

    def _train_once(self) -> None:
        self._mode(True)
        self._step(self.images, self.labels, self.pixel_weights)
        self._sync()

    def train_step(self) -> None:
        self._train_once()
        if self.load:
            self.load.run()

    def predict(self, images: np.ndarray) -> np.ndarray:
        self._mode(False)
        return self._infer(self._to_device(images.astype(self._input_dtype))).float().cpu().numpy()

    def fit(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
        self._mode(True)
        weights = None if pixel_weights is None else self._to_device(pixel_weights)
        images = self._to_device(images.astype(self._input_dtype))
        loss, _ = self._step(images, self._to_device(labels.astype(np.int64)), weights)
        return loss.item()

    def outputs(self, task: str, seed: int = SEED) -> dict[str, Any]:
        self.reset_state()
        config = self.config
        images, labels, pixel_weights = (
            (self.images, self.labels, self.pixel_weights)
            if seed == SEED
            else self._device_batch(*batch(config.spec, config.batch, config.size, seed))
        )
        if task == "infer":
            self._mode(False)
            return {"logits": self._infer(images).float().cpu().numpy()}
        self._mode(True)
        steps = []
        for _ in range(2):
            loss, logits = self._step(images, labels, pixel_weights)
            # copied at once: CUDA graphs reuse output buffers; the step's own backward, compiled
            # where the path compiles
            gradients = {
                name: p.grad.detach().cpu().numpy().copy() for name, p in self.model.named_parameters()
            }
            steps.append((self.placement.mean(loss).item(), logits.float().cpu().numpy(), gradients))
        return {
            "logits": steps[0][1],
            "loss": np.array([step[0] for step in steps]),
            "gradients": steps[0][2],
            "second_gradients": steps[1][2],
            "weights": self.weights(),
        }

    def reset_state(self) -> None:
        """Initial weights and a fresh Adam, in place, so compiled code stays valid."""
        convert.to_torch(self.work.weights, self.model)
        if "optimizer" not in self.__dict__:  # not made yet: nothing to reset
            return
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for value in state.values():
                    value.zero_()
        if self.__dict__.pop("lr_decay", None) is not None:  # made afresh at the next step, from here
            for group in self.optimizer.param_groups:
                group["lr"].fill_(group["initial_lr"])

    def weights(self) -> dict[str, np.ndarray]:
        """Canonical weights and running statistics now."""
        return convert.from_torch(self.model)

    def peak_memory_bytes(self) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return memory.peak_rss()

    def reset_peak_memory(self) -> bool:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            memory.reset_peak_rss()
        return True


@dataclass(frozen=True)
class UpconvTiming:
    """What the up-conv forms are timed for: the case's shape, its pass, and how its path runs."""

    spec: UNetSpec
    batch: int
    size: int
    backward: bool  # a train step's forward and backward; inference, the forward alone
    compile_mode: str | None  # the path's torch.compile mode, or None: eager


@functools.cache
def time_upconv_forms(
    timing: UpconvTiming, device: torch.device, autocast_dtype: torch.dtype | None
) -> dict[str, float]:
    """Seconds for the largest up-conv in each exact form, run as the case runs it: compiled
    (each form its own compile, in the warm-up call) where the path compiles, its backward where
    the case trains. Compiled code's best form need not be eager's."""
    shape = form_timing.largest_upconv(timing.spec, timing.size)
    if shape is None:
        return {"native": 0.0}
    cin, cout, side = shape
    dims = timing.spec.dims
    layout = TORCH_MEMORY_FORMATS["channels_last"][dims]
    x = torch.randn(timing.batch, cin, *(side,) * dims, device=device).to(memory_format=layout)
    x.requires_grad_(timing.backward)

    def run(module: Callable[[torch.Tensor], torch.Tensor]) -> None:
        with (
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
            torch.set_grad_enabled(timing.backward),
        ):
            out = module(x).float().sum()
            if timing.backward:
                out.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    runs = {}
    for form in ("native", "matmul"):
        module = torch_unet.transposed_upconv(cin, cout, matmul=form == "matmul", dims=dims)
        module = module.to(device, memory_format=layout)
        if timing.compile_mode is not None:
            module = torch.compile(module, mode=timing.compile_mode)
        runs[form] = functools.partial(run, module)
    return form_timing.time_forms(runs)


@functools.cache
def time_memory_formats(config: RunConfig) -> dict[str, float]:
    """Seconds of the case's whole call (a train step, or a forward) in each memory format, on
    throw-away runners of ``config`` (eager, one device), so the case's own weights and optimizer
    state never see it."""
    runners = {form: TorchRunner(config.replace(memory_format=form)) for form in TORCH_MEMORY_FORMATS}
    call = "train_step" if config.task == "train" else "infer"
    seconds = form_timing.time_forms({form: getattr(runner, call) for form, runner in runners.items()})
    runners.clear()
    gc.collect()  # a runner refers to itself (its step methods): freed now, before the case's model
    return seconds
