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
NORMS = ("batch", "none")
UPSAMPLES = ("transpose", "bilinear")

# Conv kernel side and the pixels an unpadded one removes from a side.
KERNEL = 3
VALID_CONV_SHRINK = KERNEL - 1
# Sizes are searched this far on either side of a rejected one for the nearest
# valid sizes; valid sizes recur every 2**depth pixels, far inside this. A depth
# that takes no side below it is of no practical use.
SEARCH_LIMIT = 1 << 16


class ConvLayer(NamedTuple):
    """One convolution of the network, for one square image: channels in and out, taps per output
    pixel (9 for a 3x3 conv; 1 for the 2x2 stride-2 up-conv, the bilinear path's 1x1 and the
    head), and the side of its output."""

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

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetSpec.{name}={value!r}: expected an integer >= 1")
        for name, allowed in (("padding", PADDINGS), ("norm", NORMS), ("upsample", UPSAMPLES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"UNetSpec.{name}={value!r}: expected one of {', '.join(map(repr, allowed))}"
                )
        for name in ("conv_bias", "pad_to_skip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"UNetSpec.{name}={getattr(self, name)!r}: expected True or False")
        if self.pad_to_skip and self.padding != "same":
            raise ValueError("UNetSpec.pad_to_skip=True: expected padding='same' (unpadded convs crop skips)")

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
                layers.append(ConvLayer(c, cout, KERNEL * KERNEL, side))
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
            rule = (
                "padding='valid' needs an even size at every 2x2 max-pool and a positive one "
                "after every unpadded conv"
            )
        return f"{axis} {side} is not a valid input size ({rule}); nearest valid: {nearest}"

    def check_side(self, side: int) -> int:
        """The output side for a square input of ``side``; ValueError, naming the nearest valid sides,
        if the network cannot take it."""
        out = self._side_out(side)
        if out is None:
            raise ValueError(
                f"UNetSpec(depth={self.depth}, padding={self.padding!r}): " + self._side_error("side", side)
            )
        return out

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Output (height, width) for an input of (h, w); ValueError if invalid."""
        out = (self._side_out(h), self._side_out(w))
        errors = [
            self._side_error(axis, side)
            for axis, side, o in (("height", h, out[0]), ("width", w, out[1]))
            if o is None
        ]
        if errors:
            raise ValueError(f"UNetSpec(depth={self.depth}, padding={self.padding!r}): " + "; ".join(errors))
        return out  # type: ignore[return-value]

    def check_input(self, shape: tuple[int, ...], *, layout: str = "NCHW") -> tuple[int, int]:
        """Validate an input shape given in ``layout``; return the output (h, w).

        ``layout`` only changes where the channel axis is read and how the
        message names it, so that every framework reports the same problem.
        """
        shape = tuple(int(s) for s in shape)
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout={layout!r}: expected 'NCHW' or 'NHWC'")
        if len(shape) != 4:
            raise ValueError(
                f"input shape {shape}: expected a 4-D {layout} batch, got {len(shape)} dimensions"
                + ("; add a batch axis, e.g. x[None]" if len(shape) == 3 else "")
            )
        c_axis = layout.index("C")
        channels = shape[c_axis]
        if channels != self.in_channels:
            raise ValueError(
                f"input shape {shape} ({layout}): expected {self.in_channels} channel(s) "
                f"on axis {c_axis}, got {channels}"
            )
        h, w = shape[layout.index("H")], shape[layout.index("W")]
        return self.output_size(h, w)

    # -- canonical weight table -------------------------------------------

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight names and shapes, in the PyTorch state_dict's order.

        The order follows the data: ``down0..down{depth}``, then
        ``up{depth-1}..up0``, then ``head``.
        """
        shapes: dict[str, tuple[int, ...]] = {}

        def double_conv(prefix: str, in_ch: int, out_ch: int) -> None:
            for j, cin in ((1, in_ch), (2, out_ch)):
                shapes[f"{prefix}.conv{j}.weight"] = (out_ch, cin, KERNEL, KERNEL)
                if self.conv_bias:
                    shapes[f"{prefix}.conv{j}.bias"] = (out_ch,)
                if self.norm == "batch":
                    for leaf in ("weight", "bias", "running_mean", "running_var"):
                        shapes[f"{prefix}.norm{j}.{leaf}"] = (out_ch,)

        for i in range(self.depth + 1):
            double_conv(f"down{i}", self.channels(i - 1) if i else self.in_channels, self.channels(i))
        for i in reversed(range(self.depth)):
            cin, cout = self.channels(i + 1), self.channels(i)
            upconv = (cin, cout, 2, 2) if self.upsample == "transpose" else (cout, cin, 1, 1)
            shapes[f"up{i}.upconv.weight"] = upconv
            shapes[f"up{i}.upconv.bias"] = (cout,)
            double_conv(f"up{i}", cin, cout)  # skip (cout) + upsampled (cout) channels in
        shapes["head.weight"] = (self.num_classes, self.width, 1, 1)
        shapes["head.bias"] = (self.num_classes,)
        return shapes

    def zero_gradient_biases(self) -> set[str]:
        """Canonical biases whose effect BatchNorm removes (true gradient exactly 0).

        Every conv bias right before BatchNorm, and with unpadded convs the
        up-conv bias too: the conv that follows turns it into a per-channel
        constant that the next BatchNorm subtracts. (With padding the border
        pixels see zeros instead, so that constant is not uniform.)
        """
        if self.norm != "batch":
            return set()
        names = {n for n in self.param_shapes() if ".conv" in n and n.endswith(".bias")}
        if self.padding == "valid":
            names |= {f"up{i}.upconv.bias" for i in range(self.depth)}
        return names

    # -- serialisation ----------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UNetSpec:
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown UNetSpec field(s) {unknown}; known: {sorted(known)}")
        return cls(**fields)
