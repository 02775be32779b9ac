"""The JAX path: Flax NNX split into pure functions, each step one jax.jit with donated buffers."""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bench import memory
from bench.runners.workload import workload
from impls import convert, flax_unet
from impls.losses import jax_weighted_cross_entropy
from impls.spec import UNetSpec


def make(path: str, spec: UNetSpec, **case: Any) -> JaxRunner:
    return JaxRunner(spec, **case)


def _device(device: str) -> jax.Device:
    if device == "cpu":
        return jax.devices("cpu")[0]
    index = int(device.partition(":")[2] or 0)
    return jax.devices("gpu")[index]


class JaxRunner:
    path = "jax"

    def __init__(
        self,
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
        self.spec = spec
        self.device = _device(device)
        self.cuda = self.device.platform == "gpu"
        self.device_name = self.device.device_kind if self.cuda else "cpu"
        self._replicated = self._batched = jax.sharding.SingleDeviceSharding(self.device)
        self._place_on_devices()
        # fp32 convs in full precision unless TF32 is asked for, as in the torch runner.
        self.matmul_precision = "tensorfloat32" if tf32 and self.cuda else "highest"
        compute_dtype = jnp.bfloat16 if precision == "bf16" else None
        param_dtype = jnp.float64 if precision == "fp64" else jnp.float32
        upconv_seconds = None
        if upconv == "auto":
            upconv_seconds = time_upconv_forms(
                spec, batch, size, self.device, compute_dtype, self.matmul_precision
            )
            upconv = min(upconv_seconds, key=upconv_seconds.get)
        self.work = workload(spec, batch, size)

        abstract = flax_unet.abstract(
            spec, param_dtype, compute_dtype=compute_dtype, upconv_matmul=upconv == "matmul"
        )
        model = convert.to_flax(self.work.weights, abstract)
        self._train_def, params, stats = nnx.split(model.train(), nnx.Param, nnx.BatchStat)
        self._eval_def = nnx.split(model.eval(), nnx.Param, nnx.BatchStat)[0]
        self._initial = jax.device_put((params, stats), self._replicated)  # never donated
        self._optimizer = optax.adam(learning_rate)
        self.images = self._to_device(self.work.images)
        self.labels = self._to_device(self.work.labels)
        self.pixel_weights = self._to_device(self.work.pixel_weights) if loss == "weighted" else None
        self._last_task = "train"
        self.reset_compilation()
        self._reset_state()
        self.settings = {
            "framework": "jax",
            "compile": "jax.jit of the whole step (forward, loss, grad, optax.adam), params, "
            "statistics and optimizer state donated",
            "compute_dtype": "bfloat16" if compute_dtype else "float32",
            "param_dtype": np.dtype(param_dtype).name,
            "tf32": self.matmul_precision == "tensorfloat32",
            "matmul_precision": self.matmul_precision,
            "optimizer": f"optax.adam({learning_rate})",
            "loss": loss,
            "upconv": upconv,
            "upconv_seconds": upconv_seconds,
            "memory": "XLA memory_analysis of the compiled step" if self.cuda else memory.METHOD,
        }

    # -- what a data-parallel runner changes (bench/runners/jax_dp.py) ----------------

    def _place_on_devices(self) -> None:
        """Set the shardings of replicated state and of batches: one device here."""

    def _step_function(self):
        """The pure train step that jit compiles: the whole batch on one device here."""
        return functools.partial(train_step, self._train_def, self._optimizer)

    # -- the pure step functions ------------------------------------------------

    def _infer_fn(self, params, stats, images):
        return nnx.merge(self._eval_def, params, stats)(images)

    def reset_compilation(self) -> None:
        jax.clear_caches()  # the persistent compilation cache on disk stays
        self._train = jax.jit(self._step_function(), donate_argnums=(0, 1, 2))
        self._infer = jax.jit(self._infer_fn)

    def _reset_state(self) -> None:
        # Committed to the device like the step's outputs, so every call has the same cache key.
        params, stats = jax.tree.map(jnp.copy, self._initial)
        self.params, self.stats, self.opt_state = jax.device_put(
            (params, stats, self._optimizer.init(params)), self._replicated
        )

    # -- the interface --------------------------------------------------------

    def _to_device(self, array: np.ndarray) -> jax.Array:
        """A host batch to the device(s); NCHW becomes NHWC."""
        return jax.device_put(array.transpose(0, 2, 3, 1) if array.ndim == 4 else array, self._batched)

    def _run_train(self, images, labels, pixel_weights):
        with jax.default_matmul_precision(self.matmul_precision):
            out = self._train(self.params, self.stats, self.opt_state, images, labels, pixel_weights)
        self.params, self.stats, self.opt_state = out[:3]
        return out

    def _run_infer(self, images):
        with jax.default_matmul_precision(self.matmul_precision):
            return self._infer(self.params, self.stats, images)

    def infer(self) -> None:
        self._last_task = "infer"
        jax.block_until_ready(self._run_infer(self.images))

    def train_step(self) -> None:
        self._last_task = "train"
        jax.block_until_ready(self._run_train(self.images, self.labels, self.pixel_weights))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return _nchw(self._run_infer(self._to_device(images)))

    def fit(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
        weights = None if pixel_weights is None else self._to_device(pixel_weights)
        return float(self._run_train(self._to_device(images), self._to_device(labels), weights)[3])

    def outputs(self, task: str) -> dict[str, np.ndarray]:
        self._reset_state()
        if task == "infer":
            return {"logits": self.predict(self.work.images)}
        first = self._run_train(self.images, self.labels, self.pixel_weights)
        second = self._run_train(self.images, self.labels, self.pixel_weights)
        return {"logits": _nchw(first[4]), "loss": np.array([float(first[3]), float(second[3])])}

    def reset_peak_memory(self) -> None:
        if not self.cuda:
            memory.settle()  # compiler memory freed since the baseline is not the steps'
            memory.reset_peak()

    def peak_memory_bytes(self) -> int | None:
        if not self.cuda:
            peak = memory.peak()
            return None if peak is None or self._rss_baseline is None else peak - self._rss_baseline
        # JAX's peak_bytes_in_use cannot be reset between cases; XLA's buffer assignment
        # for the compiled step says what it needs: arguments, outputs not aliased to them, temporaries.
        if self._last_task == "train":
            lowered = self._train.lower(
                self.params, self.stats, self.opt_state, self.images, self.labels, self.pixel_weights
            )
        else:
            lowered = self._infer.lower(self.params, self.stats, self.images)
        with jax.default_matmul_precision(self.matmul_precision):
            analysis = lowered.compile().memory_analysis()
        return int(
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes
        )


def gradients(train_def, params, stats, images, labels, pixel_weights, *, axis_name=None):
    """Forward, (weighted) cross-entropy and its gradient: (loss, logits, grads, new stats).

    With ``axis_name`` it runs per device under shard_map, as DDP does: each
    device's BatchNorm uses its own batch statistics, gradients and loss are
    averaged over the devices, and device 0's running statistics are kept
    (DDP broadcasts rank 0's buffers).
    """
    model = nnx.merge(train_def, params, stats)

    def loss_fn(model):
        logits = model(images)
        return jax_weighted_cross_entropy(logits, labels, pixel_weights), logits

    # nnx.value_and_grad differentiates the Params and carries BatchNorm's updates back into model.
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    stats = nnx.state(model, nnx.BatchStat)
    if axis_name is not None:
        # The parameters are replicated (unvarying over the axis), so shard_map's autodiff
        # already summed their gradients over the devices: divide for DDP's average.
        grads = jax.tree.map(lambda g: g / jax.lax.axis_size(axis_name), grads)
        loss = jax.lax.pmean(loss, axis_name)
        first = jax.lax.axis_index(axis_name) == 0  # device 0's statistics, to every device:
        stats = jax.tree.map(lambda s: jax.lax.psum(jnp.where(first, s, 0), axis_name), stats)
    return loss, logits, grads, stats


def train_step(
    train_def, optimizer, params, stats, opt_state, images, labels, pixel_weights, *, axis_name=None
):
    """One Adam step: (params, stats, opt_state, loss, logits)."""
    loss, logits, grads, stats = gradients(
        train_def, params, stats, images, labels, pixel_weights, axis_name=axis_name
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss, logits


def _nchw(logits: jax.Array) -> np.ndarray:
    return np.asarray(logits, np.float32).transpose(0, 3, 1, 2)


@functools.cache
def time_upconv_forms(
    spec: UNetSpec, batch: int, size: int, device: jax.Device, compute_dtype, matmul_precision: str
) -> dict[str, float]:
    """Seconds for forward and backward of the largest up-conv in each exact form."""
    if spec.upsample != "transpose":
        return {"native": 0.0}
    cin, cout = spec.channels(1), spec.channels(0)
    side = spec.output_size(size, size)[0] // 2 + 1  # up0's input, about
    x = jax.device_put(jnp.ones((batch, side, side, cin), jnp.float32), device)
    times = {}
    for form in ("native", "matmul"):
        module = flax_unet.transposed_upconv(
            cin, cout, matmul=form == "matmul", dtype=compute_dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0)
        )
        graphdef, params = nnx.split(module)

        def loss(params, x, graphdef=graphdef):
            return nnx.merge(graphdef, params)(x).astype(jnp.float32).sum()

        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
        params = jax.device_put(params, device)
        samples = []
        with jax.default_matmul_precision(matmul_precision):
            for _ in range(4):  # the first compiles
                start = time.perf_counter()
                jax.block_until_ready(step(params, x))
                samples.append(time.perf_counter() - start)
        times[form] = min(samples[1:])
    return times
