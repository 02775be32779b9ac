"""PyTorch paths: eager, and torch.compile of the whole step in its modes."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np
import torch

from bench import memory
from bench.runners import forms
from bench.runners.config import RunConfig
from bench.runners.workload import workload
from impls import convert, torch_unet
from impls.spec import UNetSpec

COMPILE_MODES = {
    "torch-compile": "default",
    "torch-compile-max-autotune": "max-autotune",
    "torch-compile-reduce-overhead": "reduce-overhead",
}


def set_precision(tf32: bool) -> None:
    """fp32 convs and matmuls in IEEE fp32, or TF32 if asked for: for the whole process, so that the
    backward, compiled or eager, runs as the forward does. (The flags only act on CUDA; on a CPU
    they are set all the same, so that they can be checked.)"""
    mode = "tf32" if tf32 else "ieee"
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9; mixing it with allow_tf32 is an error
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32


def use_cudnn_autotuner(config: RunConfig, cuda: bool) -> bool:
    """cuDNN's autotuner (cudnn.benchmark) where its search is short: TF32 and bf16 on CUDA.

    In IEEE fp32 its search never ended in time: the first training step of the full U-Net at
    512 px, batch 8 ran past 150 s on an H100 (torch 2.11, cuDNN 9.19), against 0.78 s for the
    first step and 0.39 s for the next without it (and 15 s, then 0.07 s, with it in TF32).
    """
    return cuda and (config.tf32 or config.precision == "bf16")


def conv_fp32_precision() -> str:
    """What cuDNN convolutions do with fp32 now: "ieee" or "tf32"."""
    if hasattr(torch.backends, "fp32_precision"):
        return torch.backends.cudnn.conv.fp32_precision
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


class SingleDevice:
    """Placement on the config's one device; bench/runners/torch_ddp.py has the data-parallel one."""

    def __init__(self, config: RunConfig) -> None:
        self.device = torch.device(config.device)
        self.settings: dict[str, Any] = {}

    def shard(self, array: np.ndarray) -> np.ndarray:
        """This process's rows of the batch: all of them."""
        return array

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


class TorchRunner:
    def __init__(self, config: RunConfig, placement: Any = None) -> None:
        self.config = config
        self.placement = placement or SingleDevice(config)
        self.device = self.placement.device
        self.cuda = self.device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        set_precision(config.tf32)
        torch.backends.cudnn.benchmark = use_cudnn_autotuner(config, self.cuda)
        self.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None
        dtype = torch.float64 if config.precision == "fp64" else torch.float32
        self.work = workload(config)
        images = self.placement.shard(self.work.images)
        upconv, upconv_seconds = config.upconv, None
        if upconv == "auto":
            upconv_seconds = time_upconv_forms(
                config.spec, len(images), config.size, self.device, self.autocast_dtype
            )
            upconv = forms.fastest(upconv_seconds)

        self.model = torch_unet.build(config.spec, dtype, upconv_matmul=upconv == "matmul")
        convert.to_torch(self.work.weights, self.model)
        self.model.to(self.device, memory_format=torch.channels_last)
        self.net = self.placement.wrap(self.model)
        # fused Adam is the fastest eager optimizer on CPU and CUDA; inductor fuses its own.
        self.compile_mode = COMPILE_MODES.get(config.path)
        fused = self.compile_mode is None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate, fused=fused)
        self._input_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.images = self._to_device(images.astype(self._input_dtype))
        self.labels = self._to_device(self.placement.shard(self.work.labels).astype(np.int64))
        self.pixel_weights = None
        if config.loss == "weighted":
            self.pixel_weights = self._to_device(
                self.placement.shard(self.work.pixel_weights).astype(self._input_dtype)
            )
        self._train, self._infer = self._train_fn, self._infer_fn
        if self.compile_mode is not None:
            self._train = torch.compile(self._train_fn, mode=self.compile_mode)
            self._infer = torch.compile(self._infer_fn, mode=self.compile_mode)
        self.settings = {
            "framework": "torch",
            "compile": f"torch.compile(mode={self.compile_mode!r}) of the whole step: forward, loss, "
            "backward (AOTAutograd), Adam"
            if self.compile_mode
            else "eager",
            "autocast": "bfloat16" if self.autocast_dtype else None,
            "tf32": config.tf32 and self.cuda,
            "fp32_precision": "process-wide: " + conv_fp32_precision(),
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "channels_last": True,
            "optimizer": f"torch.optim.Adam(lr={config.learning_rate}, fused={fused})",
            "loss": config.loss,
            "upconv": upconv,
            "upconv_seconds": upconv_seconds,
            "threads": torch.get_num_threads(),
            "memory": "torch.cuda.max_memory_allocated since the worker started"
            if self.cuda
            else memory.CPU_METHOD,
            **self.placement.settings,
        }

    # -- the step functions; compiled whole when the path compiles --------------

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
        return tensor.to(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor

    def _mode(self, training: bool) -> None:
        if self.net.training != training:  # a walk over every module: not on every call
            self.net.train(training)

    def infer(self) -> None:
        self._mode(False)
        self._infer(self.images)
        self._sync()

    def train_step(self) -> None:
        self._mode(True)
        self._train(self.images, self.labels, self.pixel_weights)
        self._sync()

    def predict(self, images: np.ndarray) -> np.ndarray:
        self._mode(False)
        return self._infer(self._to_device(images.astype(self._input_dtype))).float().cpu().numpy()

    def fit(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
        self._mode(True)
        weights = None if pixel_weights is None else self._to_device(pixel_weights)
        images = self._to_device(images.astype(self._input_dtype))
        loss, _ = self._train(images, self._to_device(labels.astype(np.int64)), weights)
        return loss.item()

    def outputs(self, task: str) -> dict[str, Any]:
        self.reset_state()
        if task == "infer":
            self._mode(False)
            return {"logits": self._infer(self.images).float().cpu().numpy()}
        self._mode(True)
        steps = []
        for step in range(2):
            loss, logits = self._train(self.images, self.labels, self.pixel_weights)
            # copied at once: CUDA graphs reuse output buffers
            steps.append((loss.item(), logits.float().cpu().numpy()))
            if step == 0:  # the step's own backward, compiled where the path compiles
                gradients = {
                    name: p.grad.detach().cpu().numpy().copy() for name, p in self.model.named_parameters()
                }
        return {
            "logits": steps[0][1],
            "loss": np.array([loss for loss, _ in steps]),
            "gradients": gradients,
        }

    def reset_state(self) -> None:
        """Initial weights and a fresh Adam, in place, so compiled code stays valid."""
        convert.to_torch(self.work.weights, self.model)
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for value in state.values():
                    value.zero_()

    def weights(self) -> dict[str, np.ndarray]:
        """Canonical weights and running statistics now."""
        return convert.from_torch(self.model)

    def peak_memory_bytes(self) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return memory.peak_rss()


@functools.cache
def time_upconv_forms(
    spec: UNetSpec, batch: int, size: int, device: torch.device, autocast_dtype: torch.dtype | None
) -> dict[str, float]:
    """Seconds for forward and backward of the largest up-conv in each exact form."""
    if spec.upsample != "transpose":
        return {"native": 0.0}
    cin, cout = spec.channels(1), spec.channels(0)
    side = spec.output_size(size, size)[0] // 2 + 1  # up0's input, about
    x = torch.randn(batch, cin, side, side, device=device).to(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def run(module: torch.nn.Module) -> None:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            module(x).float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    modules = {
        form: torch_unet.transposed_upconv(cin, cout, matmul=form == "matmul").to(
            device, memory_format=torch.channels_last
        )
        for form in ("native", "matmul")
    }
    return forms.time_forms({form: functools.partial(run, module) for form, module in modules.items()})
