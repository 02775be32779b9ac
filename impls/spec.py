"""UNetSpec: the one description every implementation is built from.

The spec fixes the architecture, validates inputs (so that every framework
refuses a bad input with the same message) and defines the canonical weight
table, whose names and layouts are PyTorch's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal, NamedTuple

PADDINGS = ("same", "valid")
NORMS = ("batch", "instance", "none")
UPSAMPLES = ("transpose", "bilinear")
ACTIVATIONS = ("relu", "leaky_relu")
DIMS = (2, 3)
# nnU-Net's and PyTorch's default negative slope.
LEAKY_RELU_SLOPE = 0.01
# Layouts of an input batch, per dims: channels first (PyTorch's) and last (Flax's).
LAYOUTS = {2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}
# The spatial axes' names, the last ``dims`` of them in 2D or 3D.
SPATIAL_AXES = ("depth", "height", "width")
# Fields added after 2D specs were written to disk: left out of the serialised spec at their
# defaults, so that every 2D spec, cache key and weights file stays byte-identical.
_OMITTED_AT_DEFAULT = ("dims", "activation")

# Conv kernel side and the pixels an unpadded one removes from a side.
KERNEL = 3
VALID_CONV_SHRINK = KERNEL - 1
# Sizes are searched this far on either side of a rejected one for the nearest
# valid sizes; valid sizes recur every 2**depth pixels, far inside this. A depth
# that takes no side below it is of no practical use.
SEARCH_LIMIT = 1 << 16


class ConvLayer(NamedTuple):
    """One convolution of the network, for one square image (cubic volume in 3D): channels in and
    out, taps per output pixel (9 for a 3x3 conv, 27 for a 3x3x3 one; 1 for the stride-2
    up-conv, the bilinear path's 1x1 and the head), and the side of its output."""

    cin: int
    cout: int
    taps: int
    side: int


@dataclass(frozen=True)
class UNetSpec:
    """A U-Net (Ronneberger et al. 2015) and its common modern variant.

    Level k of the encoder has ``width * 2**k`` channels, k = 0..depth; level
    ``depth`` is the bottleneck. ``padding="valid"`` is the paper's network
    (unpadded convs, skips centre-cropped); ``"same"`` keeps the size.
    ``pad_to_skip`` (with ``"same"``) takes any size, as milesial/Pytorch-UNet
    does: pools drop an odd last row or column, and an up-sampled map smaller
    than its skip is zero-padded to it (half the difference on the top and
    left, the rest on the bottom and right).

    ``dims=3`` is the volumetric U-Net (Çiçek et al. 2016): 3x3x3 convs, 2x2x2
    pools and up-convolutions, the same rules on every axis. ``norm="instance"``
    is nnU-Net's (affine, eps 1e-5, statistics of each sample, none kept);
    ``activation="leaky_relu"`` has slope 0.01.
    """

    in_channels: int = 1
    num_classes: int = 2
    width: int = 64
    depth: int = 4
    padding: Literal["same", "valid"] = "same"
    norm: Literal["batch", "none"] = "batch"
    upsample: Literal["transpose", "bilinear"] = "transpose"
    conv_bias: bool = True
    pad_to_skip: bool = False
    dims: int = 2
    activation: Literal["relu", "leaky_relu"] = "relu"

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetSpec.{name}={value!r}: expected an integer >= 1")
        choices = (
            ("padding", PADDINGS),
            ("norm", NORMS),
            ("upsample", UPSAMPLES),
            ("activation", ACTIVATIONS),
            ("dims", DIMS),
        )
        for name, allowed in choices:
            value = getattr(self, name)
            if isinstance(value, bool) or value not in allowed:
                raise ValueError(
                    f"UNetSpec.{name}={value!r}: expected one of {', '.join(map(repr, allowed))}"
                )
        for name in ("conv_bias", "pad_to_skip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"UNetSpec.{name}={getattr(self, name)!r}: expected True or False")
        if self.pad_to_skip and self.padding != "same":
            raise ValueError("UNetSpec.pad_to_skip=True: expected padding='same' (unpadded convs crop skips)")

    def __repr__(self) -> str:
        # As the dataclass's own, less the fields to_dict leaves out: messages that name a 2D spec
        # read as before 3D.
        fields = ", ".join(f"{name}={value!r}" for name, value in self.to_dict().items())
        return f"UNetSpec({fields})"

    # -- channels ----------------------------------------------------------

    def channels(self, level: int) -> int:
        """Channels of encoder level ``level`` (0..depth)."""
        return self.width * 2**level

    # -- shapes ------------------------------------------------------------

    def conv_layers(self, size: int) -> list[ConvLayer]:
        """Every convolution, in the order they run, for one ``size`` x ``size`` image."""
        shrink = VALID_CONV_SHRINK if self.padding == "valid" else 0
        layers: list[ConvLayer] = []
        side = size

        def double_conv(side: int, cin: int, cout: int) -> int:
            for c in (cin, cout):
                side -= shrink
                layers.append(ConvLayer(c, cout, KERNEL**self.dims, side))
            return side

        for i in range(self.depth):
            side = double_conv(side, self.channels(i - 1) if i else self.in_channels, self.channels(i)) // 2
        side = double_conv(side, self.channels(self.depth - 1), self.channels(self.depth))
        for i in reversed(range(self.depth)):
            cin, cout = self.channels(i + 1), self.channels(i)
            side *= 2
            layers.append(ConvLayer(cin, cout, 1, side))
            side = double_conv(side, cin, cout)
        layers.append(ConvLayer(self.width, self.num_classes, 1, side))
        return layers

    def _double_conv_shrink(self) -> int:
        return 2 * VALID_CONV_SHRINK if self.padding == "valid" else 0

    def _side_out(self, side: int) -> int | None:
        """Output side for an input side, or None if the network cannot take it.

        Walks one side through every conv, pool and up-convolution; a pool must
        halve exactly (unless ``pad_to_skip``) and no feature map may vanish.
        """
        if self.pad_to_skip:
            return side if side >= 2**self.depth else None
        shrink = self._double_conv_shrink()
        for _ in range(self.depth):
            side -= shrink
            if side < 2 or side % 2:
                return None
            side //= 2
        side -= shrink  # bottleneck
        if side < 1:
            return None
        for _ in range(self.depth):
            side = 2 * side - shrink
            if side < 1:
                return None
        return side

    def nearest_valid_sizes(self, side: int) -> tuple[int, ...]:
        """The valid input sides nearest ``side``: the one below it and the one above it, of those
        that exist (none below 2**depth; none above within ``SEARCH_LIMIT``)."""
        below = next((s for s in range(side - 1, 0, -1) if self._side_out(s)), None)
        above = next((s for s in range(side + 1, side + SEARCH_LIMIT) if self._side_out(s)), None)
        return tuple(s for s in (below, above) if s is not None)

    def smallest_valid_size(self) -> int | None:
        """The smallest input side the network takes; None if it takes none below ``SEARCH_LIMIT``."""
        return next((s for s in range(1, SEARCH_LIMIT) if self._side_out(s)), None)

    def max_depth(self) -> int:
        """The deepest network of this kind (all else equal) that takes a side below ``SEARCH_LIMIT``."""
        depth = 1
        while dataclasses.replace(self, depth=depth + 1).smallest_valid_size() is not None:
            depth += 1
        return depth

    def _side_error(self, axis: str, side: int) -> str:
        nearest = " and ".join(map(str, self.nearest_valid_sizes(side)))
        if self.pad_to_skip:
            rule = f"every pool needs at least one row: at least 2**depth = {2**self.depth}"
        elif self.padding == "same":
            rule = f"padding='same' needs a multiple of 2**depth = {2**self.depth}"
        else:
            pool = "x".join("2" * self.dims)
            rule = (
                f"padding='valid' needs an even size at every {pool} max-pool and a positive one "
                "after every unpadded conv"
            )
        return f"{axis} {side} is not a valid input size ({rule}); nearest valid: {nearest}"

    def _shape_fields(self) -> str:
        """The fields that decide the valid sizes, as a shape error names them."""
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return f"UNetSpec(depth={self.depth}, padding={self.padding!r}{dims})"

    def check_side(self, side: int) -> int:
        """The output side for a square input of ``side``; ValueError, naming the nearest valid sides,
        if the network cannot take it."""
        out = self._side_out(side)
        if out is None:
            raise ValueError(f"{self._shape_fields()}: " + self._side_error("side", side))
        return out

    def output_size(self, *sides: int) -> tuple[int, ...]:
        """Output sides for an input's spatial sides, (h, w) in 2D and (d, h, w) in 3D; ValueError if
        invalid."""
        axes = SPATIAL_AXES[-self.dims :]
        if len(sides) != self.dims:
            raise ValueError(
                f"UNetSpec(dims={self.dims}): expected {self.dims} sides ({', '.join(axes)}), got {sides}"
            )
        out = tuple(self._side_out(side) for side in sides)
        errors = [self._side_error(a, side) for a, side, o in zip(axes, sides, out, strict=True) if o is None]
        if errors:
            raise ValueError(f"{self._shape_fields()}: " + "; ".join(errors))
        return out  # type: ignore[return-value]

    def check_input(self, shape: tuple[int, ...], *, layout: str | None = None) -> tuple[int, ...]:
        """Validate an input shape given in ``layout`` (default channels first: NCHW, or NCDHW in 3D);
        return the output's spatial sides.

        ``layout`` only changes where the channel axis is read and how the
        message names it, so that every framework reports the same problem.
        """
        shape = tuple(int(s) for s in shape)
        layouts = LAYOUTS[self.dims]
        layout = layout or layouts[0]
        if layout not in layouts:
            expected = " or ".join(map(repr, layouts))
            raise ValueError(f"layout={layout!r}: expected {expected} (dims={self.dims})")
        if len(shape) != len(layout):
            raise ValueError(
                f"input shape {shape}: expected a {len(layout)}-D {layout} batch, got {len(shape)} dimensions"
                + ("; add a batch axis, e.g. x[None]" if len(shape) == len(layout) - 1 else "")
            )
        c_axis = layout.index("C")
        channels = shape[c_axis]
        if channels != self.in_channels:
            raise ValueError(
                f"input shape {shape} ({layout}): expected {self.in_channels} channel(s) "
                f"on axis {c_axis}, got {channels}"
            )
        return self.output_size(*(shape[layout.index(axis)] for axis in "DHW"[-self.dims :]))

    # -- canonical weight table -------------------------------------------

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight names and shapes, in the PyTorch state_dict's order.

        The order follows the data: ``down0..down{depth}``, then
        ``up{depth-1}..up0``, then ``head``.
        """
        shapes: dict[str, tuple[int, ...]] = {}
        kernel, pair, single = ((KERNEL,) * self.dims, (2,) * self.dims, (1,) * self.dims)
        norm_leaves = {
            "batch": ("weight", "bias", "running_mean", "running_var"),
            "instance": ("weight", "bias"),
        }

        def double_conv(prefix: str, in_ch: int, out_ch: int) -> None:
            for j, cin in ((1, in_ch), (2, out_ch)):
                shapes[f"{prefix}.conv{j}.weight"] = (out_ch, cin, *kernel)
                if self.conv_bias:
                    shapes[f"{prefix}.conv{j}.bias"] = (out_ch,)
                for leaf in norm_leaves.get(self.norm, ()):
                    shapes[f"{prefix}.norm{j}.{leaf}"] = (out_ch,)

        for i in range(self.depth + 1):
            double_conv(f"down{i}", self.channels(i - 1) if i else self.in_channels, self.channels(i))
        for i in reversed(range(self.depth)):
            cin, cout = self.channels(i + 1), self.channels(i)
            upconv = (cin, cout, *pair) if self.upsample == "transpose" else (cout, cin, *single)
            shapes[f"up{i}.upconv.weight"] = upconv
            shapes[f"up{i}.upconv.bias"] = (cout,)
            double_conv(f"up{i}", cin, cout)  # skip (cout) + upsampled (cout) channels in
        shapes["head.weight"] = (self.num_classes, self.width, *single)
        shapes["head.bias"] = (self.num_classes,)
        return shapes

    def zero_gradient_biases(self) -> set[str]:
        """Canonical biases whose effect the norm removes (true gradient exactly 0).

        Every conv bias right before a norm (BatchNorm or instance norm: each
        subtracts a per-channel mean), and with unpadded convs the up-conv bias
        too: the conv that follows turns it into a per-channel constant that the
        next norm subtracts. (With padding the border pixels see zeros instead,
        so that constant is not uniform.)
        """
        if self.norm == "none":
            return set()
        names = {n for n in self.param_shapes() if ".conv" in n and n.endswith(".bias")}
        if self.padding == "valid":
            names |= {f"up{i}.upconv.bias" for i in range(self.depth)}
        return names

    # -- serialisation ----------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """The fields in their order, less those added for 3D where they hold their defaults (old
        files stay byte-identical)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in _OMITTED_AT_DEFAULT or getattr(self, field.name) != field.default
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UNetSpec:
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown UNetSpec field(s) {unknown}; known: {sorted(known)}")
        return cls(**fields)
