"""The JAX paths: Flax NNX split into pure functions, each step one jax.jit with donated buffers;
jax-plain the same jit as the tutorials write it, nothing donated, Flax's own up-conv."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bench import memory
from bench.device_names import cuda_index
from bench.run_config import ADAM_BETAS, ADAM_EPS, POLY_POWER, RunConfig
from bench.runners import form_timing
from bench.runners.styles import SingleDevice, style
from bench.runners.workload import SEED, batch, workload
from impls import convert, flax_unet
from impls.spec import LAYOUTS, UNetSpec


def set_precision(tf32: bool) -> None:
    """fp32 convs and matmuls in full fp32 (JAX's GPU default is TF32), or TF32 if asked for:
    for the whole process, every jit, forward and backward."""
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")


def device_of(config: RunConfig) -> jax.Device:
    if config.device == "cpu":
        return jax.devices("cpu")[0]
    return jax.devices("gpu")[cuda_index(config.device)]


PLAIN_STYLE = (
    "plain: jax.jit of the step, nothing donated, nnx.ConvTranspose, "
    "optax.softmax_cross_entropy_with_integer_labels, optax.adam; inference through Flax's own "
    "layers (nnx.Conv, nnx.ConvTranspose, nnx.BatchNorm), training through the project's (nnx.BatchNorm "
    "updates its running variance with the biased estimate, another function)"
)
TUNED_STYLE = "tuned: up-conv form measured (unless given); params, statistics and optimizer state donated"


class JaxRunner:
    def __init__(self, config: RunConfig, placement: Any = None) -> None:
        self.config = config
        self.spec = config.spec
        self.placement = placement or SingleDevice(device_of(config))
        self.device = self.placement.device
        self.cuda = self.device.platform == "gpu"
        self.device_name = self.device.device_kind if self.cuda else "cpu"
        self.style = style(config, PLAIN_STYLE, TUNED_STYLE)
        self.donate = not self.style.plain  # the step's params, statistics and optimizer state, in place
        tf32 = config.tf32 and self.cuda
        set_precision(config.tf32)
        compute_dtype = jnp.bfloat16 if config.precision == "bf16" else None
        param_dtype = jnp.float64 if config.precision == "fp64" else jnp.float32
        self._compute_dtype = compute_dtype
        upconv, upconv_seconds = self.style.upconv, None
        if upconv == "auto":
            upconv_seconds = self.upconv_forms()
            upconv = form_timing.fastest(upconv_seconds)
        self.work = workload(config)

        abstract = flax_unet.abstract(
            config.spec, param_dtype, compute_dtype=compute_dtype, upconv_matmul=upconv == "matmul"
        )
        model = convert.to_flax(self.work.weights, abstract)
        self._train_def, params, stats = nnx.split(model.train(), nnx.Param, nnx.BatchStat)
        # the same parameters and statistics, under the same names, in the forward's own layers
        forward = flax_unet.abstract(
            config.spec,
            param_dtype,
            compute_dtype=compute_dtype,
            upconv_matmul=upconv == "matmul",
            layers=flax_unet.FLAX_LAYERS if self.style.plain else flax_unet.PROJECT_LAYERS,
        )
        self._eval_def = nnx.graphdef(forward.eval())
        self._initial = jax.device_put((params, stats), self.placement.replicated)  # never donated
        rate = config.learning_rate
        if config.learning_rate_decay_steps:  # counted in the optimizer's state: the same at every step
            rate = poly_decay(rate, config.learning_rate_decay_steps)
        self._optimizer = optax.adam(rate, *ADAM_BETAS, ADAM_EPS)
        self.images, self.labels, self.pixel_weights = self._device_batch(
            self.work.images, self.work.labels, self.work.pixel_weights
        )
        self._train = jax.jit(
            self.placement.distribute(
                functools.partial(train_step, self._train_def, self._optimizer),
                in_specs=("replicated",) * 3 + ("batched",) * 3,
                out_specs=("replicated",) * 4 + ("batched",),
            ),
            donate_argnums=(0, 1, 2) if self.donate else (),
        )
        self._infer = jax.jit(self._infer_fn)
        self.reset_state()
        self.settings = {
            "framework": "jax",
            "style": self.style.description,
            "compile": "jax.jit of the whole step (forward, loss, grad, optax.adam), params, "
            "statistics and optimizer state " + ("donated" if self.donate else "not donated"),
            "compute_dtype": "bfloat16" if compute_dtype else "float32",
            "param_dtype": np.dtype(param_dtype).name,
            "tf32": tf32,
            "memory_format": f"{LAYOUTS[config.spec.dims][1]} (XLA chooses layouts)",
            "matmul_precision": "process-wide: " + jax.config.jax_default_matmul_precision,
            "optimizer": f"optax.adam({config.learning_rate})" + config.decay_description,
            "loss": config.loss,
            "upconv": upconv,
            "upconv_seconds": upconv_seconds,
            "memory": 'memory_stats()["peak_bytes_in_use"] since the worker started (no preallocation)'
            if self.cuda
            else memory.CPU_METHOD,
            **self.placement.settings,
        }

    def upconv_forms(self) -> dict[str, float]:
        """Seconds for the largest up-conv in each exact form, jitted, as this case runs it."""
        config = self.config
        shape = (config.spec, config.batch, config.size)
        return time_upconv_forms(*shape, self.device, self._compute_dtype, config.task == "train")

    def _infer_fn(self, params, stats, images):
        return nnx.merge(self._eval_def, params, stats)(images)

    def reset_state(self) -> None:
        # Committed to the device like the step's outputs, so every call has the same cache key.
        self.params, self.stats, self.opt_state = jax.device_put(
            self._fresh_state(self._initial), self.placement.replicated
        )

    @functools.cached_property
    def _fresh_state(self) -> Any:
        """Copies of the initial parameters and statistics and a new optimizer state, in one jitted
        call: leaf by leaf, eagerly, each shape compiled its own copy and zeros (31 compiles, about
        a second and a half of every jax worker's start here)."""

        def fresh(initial: Any) -> tuple[Any, Any, Any]:
            params, stats = jax.tree.map(jnp.copy, initial)
            return params, stats, self._optimizer.init(params)

        return jax.jit(fresh)

    # -- the interface --------------------------------------------------------

    def _to_device(self, array: np.ndarray) -> jax.Array:
        """A host batch to the device(s); images become channels-last (NCHW to NHWC, NCDHW to NDHWC)."""
        maps = array.ndim == self.spec.dims + 2  # images, not labels or pixel weights
        return jax.device_put(np.moveaxis(array, 1, -1) if maps else array, self.placement.batched)

    def _device_batch(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray) -> tuple:
        """A host batch as the step takes it (no pixel weights unless the loss is weighted)."""
        weighted = self.config.loss == "weighted"
        return (
            self._to_device(images),
            self._to_device(labels),
            self._to_device(pixel_weights) if weighted else None,
        )

    def _run_train(self, images, labels, pixel_weights):
        out = self._train(self.params, self.stats, self.opt_state, images, labels, pixel_weights)
        self.params, self.stats, self.opt_state = out[:3]
        return out

    def infer(self) -> None:
        jax.block_until_ready(self._infer(self.params, self.stats, self.images))

    def train_step(self) -> None:
        jax.block_until_ready(self._run_train(self.images, self.labels, self.pixel_weights))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return _nchw(self._infer(self.params, self.stats, self._to_device(images)))

    def fit(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
        weights = None if pixel_weights is None else self._to_device(pixel_weights)
        return float(self._run_train(self._to_device(images), self._to_device(labels), weights)[3])

    def outputs(self, task: str, seed: int = SEED) -> dict[str, Any]:
        self.reset_state()
        images, labels, pixel_weights = (
            (self.images, self.labels, self.pixel_weights)
            if seed == SEED
            else self._device_batch(*batch(self.spec, self.config.batch, self.config.size, seed))
        )
        if task == "infer":
            return {"logits": _nchw(self._infer(self.params, self.stats, images))}
        # The timed step's own gradients, read back from Adam's first moment, which each step moves
        # by (1 - b1) times (gradient - moment). (A gradient function would be another compilation.)
        moments, steps = [jax.tree.map(np.zeros_like, self.opt_state[0].mu)], []
        for _ in range(2):
            steps.append(self._run_train(images, labels, pixel_weights))
            moments.append(jax.tree.map(lambda m: np.asarray(m, np.float64), self.opt_state[0].mu))
        b1 = ADAM_BETAS[0]
        gradients = [
            convert.from_flax_state(
                jax.tree.map(lambda new, old: (new - b1 * old) / (1 - b1), new, old), self.spec
            )
            for old, new in itertools.pairwise(moments)
        ]
        return {
            "logits": _nchw(steps[0][4]),
            "loss": np.array([float(step[3]) for step in steps]),
            "gradients": gradients[0],
            "second_gradients": gradients[1],
            "weights": self.weights(),
        }

    def weights(self) -> dict[str, np.ndarray]:
        """Canonical weights and running statistics now."""
        return convert.from_flax(nnx.merge(self._train_def, self.params, self.stats))

    def reset_peak_memory(self) -> bool:
        """On a CPU, the resident peak starts over; XLA's GPU allocator keeps its peak for good."""
        if self.cuda:
            return False
        memory.reset_peak_rss()
        return True

    def peak_memory_bytes(self) -> int | None:
        if self.cuda:
            return int(self.device.memory_stats()["peak_bytes_in_use"])
        return memory.peak_rss()


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
        return flax_unet.weighted_cross_entropy(logits, labels, pixel_weights), logits

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


def poly_decay(rate: float, steps: int):
    """nnU-Net's poly schedule of Adam's rate, as PyTorch's PolynomialLR: ``rate * (1 - count /
    steps) ** POLY_POWER``, 0 from ``steps`` on. Not optax.polynomial_schedule: jitted, its ``1 -
    count / steps`` comes out a hair below 0 at ``count == steps`` (XLA divides by multiplying by
    the reciprocal), and the power of that is NaN, which the next step writes into every weight."""

    def schedule(count):
        return rate * jnp.maximum(1.0 - count / steps, 0.0) ** POLY_POWER

    return schedule


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
    """Channels-last logits to channels-first (NCHW, NCDHW) on the host."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(logits, np.float32), -1, 1))


@functools.cache
def time_upconv_forms(
    spec: UNetSpec, batch: int, size: int, device: jax.Device, compute_dtype, backward: bool
) -> dict[str, float]:
    """Seconds for the largest up-conv in each exact form, jitted: its forward and backward where
    the case trains (``backward``), its forward alone where it infers."""
    shape = form_timing.largest_upconv(spec, size)
    if shape is None:
        return {"native": 0.0}
    cin, cout, side = shape
    x = jax.device_put(jnp.ones((batch, *(side,) * spec.dims, cin), jnp.float32), device)
    runs = {}
    rng = np.random.default_rng(SEED)
    for form in ("native", "matmul"):
        # Weights from numpy, not Flax's initialiser: its truncated normal compiles for seconds on a
        # CPU, per kernel shape, and the values do not change a convolution's time.
        options = dict(matmul=form == "matmul", dtype=compute_dtype, param_dtype=jnp.float32, dims=spec.dims)
        module = functools.partial(flax_unet.transposed_upconv, cin, cout, **options)
        graphdef, shapes = nnx.split(nnx.eval_shape(module, rngs=nnx.Rngs(0)))
        params = jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype), shapes)

        def loss(params, x, graphdef=graphdef):
            return nnx.merge(graphdef, params)(x).astype(jnp.float32).sum()

        step = jax.jit(jax.grad(loss, argnums=(0, 1)) if backward else loss)
        runs[form] = functools.partial(
            lambda step, params: jax.block_until_ready(step(params, x)), step, jax.device_put(params, device)
        )
    return form_timing.time_forms(runs)  # the warm-up call compiles
