"""The U-Net in Flax NNX (NHWC; NDHWC in 3D), built from a UNetSpec.

Mirrors ``torch_unet.py`` block for block and name for name, so that the
canonical weight ``down1.conv2.weight`` lives at ``model.down1.conv2.kernel``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from impls.spec import KERNEL, LAYOUTS, LEAKY_RELU_SLOPE, UNetSpec

# PyTorch's BatchNorm momentum 0.1 weighs the new batch; Flax's weighs the old value.
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


class BatchNorm(nnx.Module):
    """BatchNorm over channels-last maps (NHWC, NDHWC) with PyTorch's semantics.

    Unlike ``nnx.BatchNorm`` it updates ``var`` with the unbiased batch
    variance, as ``torch.nn.BatchNorm2d`` does, computes the variance in two
    passes rather than as E[x^2] - E[x]^2, and keeps its statistics in the
    parameters' dtype (``nnx.BatchNorm`` always uses float32). With a lower
    precision input (bfloat16) it normalises in the parameters' precision and
    returns the input's dtype, as cuDNN and PyTorch's mixed-precision
    BatchNorm do.
    """

    def __init__(self, channels: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs | None = None) -> None:
        del rngs  # nnx.BatchNorm's signature; nothing here is random
        self.scale = nnx.Param(jnp.ones((channels,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((channels,), param_dtype))
        self.use_running_average = False  # switched by Module.train() / .eval()
        self.momentum = BN_MOMENTUM
        self.epsilon = BN_EPS

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = x.dtype
        x = x.astype(jnp.promote_types(x.dtype, self.mean.dtype))
        if self.use_running_average:
            # Folded per channel into one multiply-add per value, as PyTorch's inference-mode
            # BatchNorm computes it.
            factor = jax.lax.rsqrt(self.var[...] + self.epsilon) * self.scale[...]
            return (x * factor + (self.bias[...] - self.mean[...] * factor)).astype(out_dtype)
        n = x.size // x.shape[-1]
        if n < 2:
            raise ValueError(
                f"BatchNorm in train mode needs more than 1 value per channel, got input "
                f"shape {x.shape}; use a larger batch or image, or model.eval()"
            )
        axes = tuple(range(x.ndim - 1))
        mean = x.mean(axes)
        var = jnp.square(x - mean).mean(axes)
        m = self.momentum
        self.mean[...] = m * self.mean[...] + (1 - m) * mean
        self.var[...] = m * self.var[...] + (1 - m) * var * (n / (n - 1))
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(out_dtype)


class InstanceNorm(nnx.Module):
    """Instance norm over channels-last maps with PyTorch's semantics (``nn.InstanceNorm3d(affine=True)``):
    each sample's and channel's mean and biased variance over the spatial axes, the variance in two
    passes, in the parameters' precision (the input's dtype returned); no running statistics."""

    def __init__(self, channels: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs | None = None) -> None:
        del rngs  # nnx.InstanceNorm's signature; nothing here is random
        self.scale = nnx.Param(jnp.ones((channels,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))
        self.epsilon = BN_EPS

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = x.dtype
        x = x.astype(jnp.promote_types(x.dtype, self.scale.dtype))
        axes = tuple(range(1, x.ndim - 1))
        mean = x.mean(axes, keepdims=True)
        var = jnp.square(x - mean).mean(axes, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(out_dtype)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` added in float32 at least, returned in ``y``'s dtype. As autocast's convolutions
    do (the bias joins their float32 accumulator): then the bias gradient, a sum over every pixel
    of the batch, is accumulated in float32 too, where Flax's own bias add sums it in bfloat16
    (0.08 off torch's on the head's bias at 32 px, width 8)."""
    return (y.astype(jnp.promote_types(y.dtype, jnp.float32)) + bias).astype(y.dtype)


def _bias_in_float32(layer: type) -> type:
    """Flax's ``layer`` (nnx.Conv, nnx.ConvTranspose) built without its own bias add: the same
    parameters (``bias`` beside ``kernel``), the bias added by add_bias."""

    class Layer(layer):
        def __init__(self, *args, use_bias: bool = True, param_dtype=jnp.float32, **options) -> None:
            super().__init__(*args, use_bias=False, param_dtype=param_dtype, **options)
            shape = (self.out_features,)
            self.bias = nnx.Param(jnp.zeros(shape, param_dtype)) if use_bias else nnx.data(None)

        def __call__(self, x: jax.Array) -> jax.Array:
            y = super().__call__(x)
            return y if self.bias is None else add_bias(y, self.bias[...])

    Layer.__name__ = Layer.__qualname__ = layer.__name__
    return Layer


Conv = _bias_in_float32(nnx.Conv)
ConvTranspose = _bias_in_float32(nnx.ConvTranspose)


def _flax_batch_norm(channels: int, *, param_dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPS, param_dtype=param_dtype, rngs=rngs)


def _flax_instance_norm(channels: int, *, param_dtype, rngs: nnx.Rngs) -> nnx.InstanceNorm:
    return nnx.InstanceNorm(channels, epsilon=BN_EPS, param_dtype=param_dtype, rngs=rngs)


@dataclass(frozen=True)
class Layers:
    """The layers a U-Net is built from, each taking Flax's arguments and holding the same
    parameters under the same names, so that one conversion loads either."""

    conv: type
    conv_transpose: type
    batch_norm: Callable[..., nnx.Module]  # (channels, *, param_dtype, rngs)
    instance_norm: Callable[..., nnx.Module]  # (channels, *, param_dtype, rngs)


# The project's: PyTorch's function in every precision (float32 bias adds, BatchNorm's unbiased
# running variance). Flax's own, as a plainly written NNX U-Net uses them: the same function in fp32
# inference, but nnx.BatchNorm updates its running variance with the biased estimate, so a U-Net of
# them does not train the same function (jax-plain infers with them and trains with the project's).
PROJECT_LAYERS = Layers(Conv, ConvTranspose, BatchNorm, InstanceNorm)
FLAX_LAYERS = Layers(nnx.Conv, nnx.ConvTranspose, _flax_batch_norm, _flax_instance_norm)


def conv3x3(
    spec: UNetSpec, in_ch: int, out_ch: int, *, layers: Layers, dtype, param_dtype, rngs: nnx.Rngs
) -> nnx.Conv:
    # "SAME" and "VALID" pad a 3x3 stride-1 conv by 1 and 0, as 1 and 0 do; as strings they stay
    # hashable primitive parameters where jax2onnx binds them (impls/export.py)
    padding = "SAME" if spec.padding == "same" else "VALID"
    return layers.conv(
        in_ch,
        out_ch,
        (KERNEL,) * spec.dims,
        padding=padding,
        use_bias=spec.conv_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def norm(
    spec: UNetSpec, channels: int, *, layers: Layers, param_dtype, rngs: nnx.Rngs
) -> nnx.Module | Callable:
    if spec.norm == "none":
        return nnx.identity
    layer = layers.instance_norm if spec.norm == "instance" else layers.batch_norm
    return layer(channels, param_dtype=param_dtype, rngs=rngs)


def leaky_relu(x: jax.Array) -> jax.Array:
    # One function object (not a partial per model), so that equal models have equal graphdefs.
    return jax.nn.leaky_relu(x, LEAKY_RELU_SLOPE)


def activation(spec: UNetSpec) -> Callable[[jax.Array], jax.Array]:
    return leaky_relu if spec.activation == "leaky_relu" else jax.nn.relu


def center_crop(x: jax.Array, *sides: int) -> jax.Array:
    """The centre of a channels-last map's spatial axes, ``sides`` long."""
    starts = [(have - want) // 2 for have, want in zip(x.shape[1:-1], sides, strict=True)]
    return x[(slice(None), *(slice(start, start + side) for start, side in zip(starts, sides, strict=True)))]


def pad_to(x: jax.Array, *sides: int) -> jax.Array:
    """Zero-pad the spatial axes to ``sides``: half the difference before (top, left, front), the
    rest after."""
    pads = [
        ((want - have) // 2, want - have - (want - have) // 2)
        for have, want in zip(x.shape[1:-1], sides, strict=True)
    ]
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


class DoubleConv(nnx.Module):
    """(3x3 conv -> norm -> activation) twice: ``down{i}``."""

    def __init__(
        self, spec: UNetSpec, in_ch: int, out_ch: int, *, layers: Layers, dtype, param_dtype, rngs: nnx.Rngs
    ) -> None:
        conv = dict(layers=layers, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = conv3x3(spec, in_ch, out_ch, **conv)
        self.norm1 = norm(spec, out_ch, layers=layers, param_dtype=param_dtype, rngs=rngs)
        # out_ch in, not in_ch: a common bug
        self.conv2 = conv3x3(spec, out_ch, out_ch, **conv)
        self.norm2 = norm(spec, out_ch, layers=layers, param_dtype=param_dtype, rngs=rngs)
        self.activation = activation(spec)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.activation(self.norm1(self.conv1(x)))
        return self.activation(self.norm2(self.conv2(x)))


# jax.image.resize's name for linear interpolation in each dimensionality (the same method).
_INTERPOLATION = {2: "bilinear", 3: "trilinear"}


class BilinearUpconv(Conv):
    """Bilinear (trilinear in 3D) x2 with half-pixel centres, then this 1x1 conv: the
    ``"bilinear"`` up-conv."""

    def __init__(self, in_ch: int, out_ch: int, *, dims: int, dtype, param_dtype, rngs: nnx.Rngs) -> None:
        super().__init__(in_ch, out_ch, (1,) * dims, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.method = _INTERPOLATION[dims]

    def __call__(self, x: jax.Array) -> jax.Array:
        n, *sides, c = x.shape
        # antialias filters only when downsampling; off, jax2onnx converts it
        resized = jax.image.resize(x, (n, *(2 * side for side in sides), c), self.method, antialias=False)
        return super().__call__(resized)


class MatmulConvTranspose(ConvTranspose):
    """The stride-2 transposed conv as a per-pixel matrix product and a depth-to-space.

    Exact: the output's 2x2 (2x2x2) blocks do not overlap, so output pixel (2i+a, 2j+b)
    is input pixel (i, j) times kernel tap (a, b). Same parameters as
    ``nnx.ConvTranspose`` (whose kernel is stored flipped, see convert.py).
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        n, *sides, _ = x.shape
        dims = len(sides)
        kernel = self.kernel[...][(slice(None, None, -1),) * dims].astype(self.dtype or x.dtype)
        axes, taps = "dhw"[-dims:], "abe"[:dims]
        # 2D: "nhwc,abco->nhawbo"; each output axis is (input position, tap)
        pattern = f"n{axes}c,{taps}co->n{''.join(a + t for a, t in zip(axes, taps, strict=True))}o"
        y = jnp.einsum(pattern, x.astype(kernel.dtype), kernel)
        y = y.reshape(n, *(2 * side for side in sides), kernel.shape[-1])
        return add_bias(y, self.bias[...])


def transposed_upconv(
    in_ch: int,
    out_ch: int,
    *,
    matmul: bool,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
    layers: Layers = PROJECT_LAYERS,
    dims: int = 2,
) -> nnx.ConvTranspose:
    """The 2x2 (2x2x2) stride-2 up-convolution, as ``layers``' transposed conv or as MatmulConvTranspose.

    transpose_kernel=False: the kernel is that of the equivalent dilated conv,
    i.e. PyTorch's weight flipped spatially (convert.py).
    """
    layer = MatmulConvTranspose if matmul else layers.conv_transpose
    return layer(
        in_ch,
        out_ch,
        (2,) * dims,
        strides=(2,) * dims,
        padding="VALID",
        transpose_kernel=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class Up(DoubleConv):
    """Up-convolution, concat([skip, upsampled]), then a DoubleConv: ``up{i}``."""

    def __init__(
        self,
        spec: UNetSpec,
        in_ch: int,
        out_ch: int,
        *,
        upconv_matmul: bool,
        layers: Layers,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ) -> None:
        layer = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if spec.upsample == "transpose":
            self.upconv = transposed_upconv(
                in_ch, out_ch, matmul=upconv_matmul, layers=layers, dims=spec.dims, **layer
            )
        else:
            self.upconv = BilinearUpconv(in_ch, out_ch, dims=spec.dims, **layer)
        # skip (out_ch) + upsampled (out_ch) = in_ch
        super().__init__(spec, in_ch, out_ch, layers=layers, **layer)
        self.pad_to_skip = spec.pad_to_skip

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = self.upconv(x)
        if self.pad_to_skip:
            x = pad_to(x, *skip.shape[1:-1])
        else:
            skip = center_crop(skip, *x.shape[1:-1])
        return super().__call__(jnp.concatenate([skip, x], axis=-1))


class UNet(nnx.Module):
    def __init__(
        self, spec: UNetSpec, *, upconv_matmul: bool, layers: Layers, dtype, param_dtype, rngs: nnx.Rngs
    ) -> None:
        self.spec = spec
        layer = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for i in range(spec.depth + 1):
            in_ch = spec.channels(i - 1) if i else spec.in_channels
            setattr(self, f"down{i}", DoubleConv(spec, in_ch, spec.channels(i), layers=layers, **layer))
        for i in reversed(range(spec.depth)):
            channels = (spec.channels(i + 1), spec.channels(i))
            setattr(self, f"up{i}", Up(spec, *channels, upconv_matmul=upconv_matmul, layers=layers, **layer))
        self.head = layers.conv(spec.width, spec.num_classes, (1,) * spec.dims, **layer)

    def train(self, **attributes) -> UNet:
        """BatchNorm on batch statistics; returns self, as torch's Module.train() does."""
        super().train(**attributes)
        return self

    def eval(self, **attributes) -> UNet:
        """BatchNorm on running statistics; returns self, as torch's Module.eval() does."""
        super().eval(**attributes)
        return self

    def __call__(self, x: jax.Array) -> jax.Array:
        if not any(map(jax.export.is_symbolic_dim, x.shape)):  # symbolic sizes: impls/export.py checks them
            self.spec.check_input(x.shape, layout=LAYOUTS[self.spec.dims][1])
        skips = []
        for i in range(self.spec.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            pool = (2,) * self.spec.dims
            x = nnx.max_pool(x, window_shape=pool, strides=pool)  # by keyword, as jax2onnx's takes it
        x = getattr(self, f"down{self.spec.depth}")(x)
        for i in reversed(range(self.spec.depth)):
            x = getattr(self, f"up{i}")(x, skips[i])
        return self.head(x)


def build(
    spec: UNetSpec,
    seed: int = 0,
    dtype: jnp.dtype = jnp.float32,
    *,
    compute_dtype: jnp.dtype | None = None,
    upconv_matmul: bool = False,
    layers: Layers = PROJECT_LAYERS,
) -> UNet:
    """A new U-Net with Flax's default initialisation, in train mode.

    ``dtype`` is the parameters' dtype; ``compute_dtype`` (default: the same)
    is what convs compute in, e.g. bfloat16 over float32 parameters.
    ``upconv_matmul`` computes the transposed convs as MatmulConvTranspose;
    ``layers``: the project's, or FLAX_LAYERS (Flax's own).
    """
    return UNet(
        spec,
        upconv_matmul=upconv_matmul,
        layers=layers,
        dtype=compute_dtype or dtype,
        param_dtype=dtype,
        rngs=nnx.Rngs(seed),
    )


def abstract(spec: UNetSpec, dtype: jnp.dtype = jnp.float32, **options) -> UNet:
    """The U-Net's structure, shapes and dtypes with no values, to load weights into.

    ``convert.to_flax(weights, abstract(spec))`` gives the same model as loading
    into ``build(spec)`` but skips the random init, whose per-shape compilation
    takes seconds on a CPU. ``options`` are those of ``build``.
    """
    return nnx.eval_shape(lambda: build(spec, dtype=dtype, **options))


def predictor(model: UNet) -> Callable[[np.ndarray], np.ndarray]:
    """For impls.tiling: a float32 channels-first numpy batch (NCHW, NCDHW) to logits in the same
    layout, in eval mode.

    The Flax model is channels-last; this thin adapter moves the channel axis on
    the way in and out and jits the forward. It predicts with the weights the
    model has now.
    """
    graphdef, state = nnx.split(model.eval())
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))

    def predict(batch: np.ndarray) -> np.ndarray:
        logits = forward(state, jnp.asarray(np.moveaxis(batch, 1, -1)))
        return np.ascontiguousarray(np.moveaxis(np.asarray(logits, np.float32), -1, 1))

    return predict


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """mean over pixels of w(x) * CE(x); NHWC (NDHWC) logits, (N, H, W) ((N, D, H, W)) labels and weights.

    Computed in float32 at least (bfloat16 logits are promoted).
    """
    pixel = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), labels
    )
    return (pixel if weights is None else pixel * weights).mean()
