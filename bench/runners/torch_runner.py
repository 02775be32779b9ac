"""PyTorch paths: eager, and torch.compile of the whole step in its modes."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

import numpy as np
import torch

from bench import memory
from bench.runners.workload import workload
from impls import convert, torch_unet
from impls.losses import torch_weighted_cross_entropy
from impls.spec import UNetSpec

COMPILE_MODES = {
    "torch-compile": "default",
    "torch-compile-max-autotune": "max-autotune",
    "torch-compile-reduce-overhead": "reduce-overhead",
}


def make(path: str, spec: UNetSpec, **case: Any) -> TorchRunner:
    return TorchRunner(path, spec, **case)


class TorchRunner:
    def __init__(
        self,
        path: str,
        spec: UNetSpec,
        *,
        batch: int,
        size: int,
        precision: str,
        device: str,
        tf32: bool,
        upconv: str,
        loss: str,
        learning_rate: float,
    ) -> None:
        self._rss_baseline = memory.settle()
        self.path = path
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        self.tf32 = tf32 and self.cuda
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        dtype = torch.float64 if precision == "fp64" else torch.float32
        self.work = workload(spec, batch, size)
        images = self._shard(self.work.images)
        upconv_seconds = None
        if upconv == "auto":
            upconv_seconds = time_upconv_forms(
                spec, len(images), size, self.device, self.autocast_dtype, self.tf32
            )
            upconv = min(upconv_seconds, key=upconv_seconds.get)

        self.model = torch_unet.build(spec, dtype, upconv_matmul=upconv == "matmul")
        convert.to_torch(self.work.weights, self.model)
        self.model.to(self.device, memory_format=torch.channels_last)
        self.net = self._wrap(self.model)
        # fused Adam is the fastest eager optimizer on CPU and CUDA; inductor fuses its own.
        self.compile_mode = COMPILE_MODES.get(path)
        fused = self.compile_mode is None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate, fused=fused)
        self._input_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.images = self._to_device(images.astype(self._input_dtype))
        self.labels = self._to_device(self._shard(self.work.labels).astype(np.int64))
        self.pixel_weights = None
        if loss == "weighted":
            self.pixel_weights = self._to_device(
                self._shard(self.work.pixel_weights).astype(self._input_dtype)
            )
        self._train = self._train_fn
        self._infer = self._infer_fn
        self.reset_compilation()
        self.settings = {
            "framework": "torch",
            "compile": f"torch.compile(mode={self.compile_mode!r}) of the whole step: forward, loss, "
            "backward (AOTAutograd), Adam"
            if self.compile_mode
            else "eager",
            "autocast": "bfloat16" if self.autocast_dtype else None,
            "tf32": self.tf32,
            "cudnn.benchmark": self.cuda,
            "channels_last": True,
            "optimizer": f"torch.optim.Adam(lr={learning_rate}, fused={fused})",
            "loss": loss,
            "upconv": upconv,
            "upconv_seconds": upconv_seconds,
            "threads": torch.get_num_threads(),
            "memory": "torch.cuda.max_memory_allocated" if self.cuda else memory.METHOD,
        }

    # -- what a data-parallel runner changes (bench/runners/torch_ddp.py) -------------

    def _shard(self, array: np.ndarray) -> np.ndarray:
        """This process's rows of a global batch: all of them on one device."""
        return array

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the steps call: the model itself on one device."""
        return model

    # -- the step functions; compiled whole when the path compiles --------------

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.cuda:
            stack.enter_context(
                torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=self.tf32)
            )
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
        return stack

    def _train_fn(self, images, labels, pixel_weights) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        with self._context():
            logits = self.net(images)
        loss = torch_weighted_cross_entropy(logits, labels, pixel_weights)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    @torch.no_grad()
    def _infer_fn(self, images: torch.Tensor) -> torch.Tensor:
        with self._context():
            return self.net(images)

    def reset_compilation(self) -> None:
        if self.compile_mode is None:
            return
        torch._dynamo.reset()
        self._train = torch.compile(self._train_fn, mode=self.compile_mode)
        self._infer = torch.compile(self._infer_fn, mode=self.compile_mode)

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

    def outputs(self, task: str) -> dict[str, np.ndarray]:
        self._reset_state()
        if task == "infer":
            self._mode(False)
            return {"logits": self._infer(self.images).float().cpu().numpy()}
        self._mode(True)
        steps = []
        for _ in range(2):
            loss, logits = self._train(self.images, self.labels, self.pixel_weights)
            # copied at once: CUDA graphs reuse output buffers
            steps.append((loss.item(), logits.float().cpu().numpy()))
        return {"logits": steps[0][1], "loss": np.array([loss for loss, _ in steps])}

    def _reset_state(self) -> None:
        """Initial weights and a fresh Adam, in place, so compiled code stays valid."""
        convert.to_torch(self.work.weights, self.model)
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for value in state.values():
                    value.zero_()

    def reset_peak_memory(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            memory.settle()  # compiler memory freed since the baseline is not the steps'
            memory.reset_peak()

    def peak_memory_bytes(self) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        peak = memory.peak()
        return None if peak is None or self._rss_baseline is None else peak - self._rss_baseline


@functools.cache
def time_upconv_forms(
    spec: UNetSpec,
    batch: int,
    size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    tf32: bool,
) -> dict[str, float]:
    """Seconds for forward and backward of the largest up-conv in each exact form."""
    if spec.upsample != "transpose":
        return {"native": 0.0}
    cin, cout = spec.channels(1), spec.channels(0)
    side = spec.output_size(size, size)[0] // 2 + 1  # up0's input, about
    x = torch.randn(batch, cin, side, side, device=device).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    times = {}
    for form in ("native", "matmul"):
        module = torch_unet.transposed_upconv(cin, cout, matmul=form == "matmul")
        module.to(device, memory_format=torch.channels_last)
        samples = []
        for _ in range(4):  # the first is warm-up
            start = time.perf_counter()
            with (
                torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=tf32),
                torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
            ):
                module(x).float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples.append(time.perf_counter() - start)
        times[form] = min(samples[1:])
    return times
