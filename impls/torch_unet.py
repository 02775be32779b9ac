"""The U-Net in PyTorch (NCHW; NCDHW in 3D), built from a UNetSpec.

Mirrors ``flax_unet.py`` block for block and name for name; the module names
are the canonical weight names of ``UNetSpec.param_shapes``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from impls.spec import KERNEL, LEAKY_RELU_SLOPE, UNetSpec

# PyTorch's BatchNorm (and InstanceNorm) defaults, written out because they are part of the contract.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5

# PyTorch's layers and functions per number of spatial dimensions.
CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CONV_FUNCTION = {2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {2: F.max_pool2d, 3: F.max_pool3d}
_NORM = {
    "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}
_INTERPOLATION = {2: "bilinear", 3: "trilinear"}


def conv3x3(spec: UNetSpec, in_ch: int, out_ch: int) -> nn.Module:
    padding = 1 if spec.padding == "same" else 0
    return CONV[spec.dims](in_ch, out_ch, KERNEL, padding=padding, bias=spec.conv_bias)


def norm(spec: UNetSpec, channels: int) -> nn.Module:
    if spec.norm == "none":
        return nn.Identity()
    layer = _NORM[spec.norm][spec.dims]
    if spec.norm == "instance":  # nnU-Net's: affine, no running statistics
        return layer(channels, eps=BN_EPS, affine=True)
    return layer(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_RELU_SLOPE)


def activation(spec: UNetSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    return leaky_relu if spec.activation == "leaky_relu" else F.relu


def center_crop(x: torch.Tensor, *sides: int) -> torch.Tensor:
    """The centre of ``x``'s last ``len(sides)`` axes, ``sides`` long."""
    starts = [(have - want) // 2 for have, want in zip(x.shape[-len(sides) :], sides, strict=True)]
    return x[(..., *(slice(start, start + side) for start, side in zip(starts, sides, strict=True)))]


def pad_to(x: torch.Tensor, *sides: int) -> torch.Tensor:
    """Zero-pad the last ``len(sides)`` axes to ``sides``: half the difference before (top, left,
    front), the rest after."""
    pads: list[int] = []
    for have, want in reversed(list(zip(x.shape[-len(sides) :], sides, strict=True))):
        pads += [(want - have) // 2, want - have - (want - have) // 2]
    return F.pad(x, pads)


class DoubleConv(nn.Module):
    """(3x3 conv -> norm -> activation) twice: ``down{i}``."""

    def __init__(self, spec: UNetSpec, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self._add_convs(spec, in_ch, out_ch)

    def _add_convs(self, spec: UNetSpec, in_ch: int, out_ch: int) -> None:
        self.conv1 = conv3x3(spec, in_ch, out_ch)
        self.norm1 = norm(spec, out_ch)
        self.conv2 = conv3x3(spec, out_ch, out_ch)  # out_ch in, not in_ch: a common bug
        self.norm2 = norm(spec, out_ch)
        self.activation = activation(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(self.conv1(x)))
        return self.activation(self.norm2(self.conv2(x)))


def depth_to_space(x: torch.Tensor, dims: int) -> torch.Tensor:
    """(N, C * 2**dims, *sides) to (N, C, *2 sides), the channels ordered (c, then one tap per
    axis), as ``pixel_shuffle`` takes them in 2D."""
    if dims == 2:
        return F.pixel_shuffle(x, 2)
    n, channels, *sides = x.shape
    out = channels // 2**dims
    x = x.reshape(n, out, *(2,) * dims, *sides)
    # (n, out, a, b, c, d, h, w) -> (n, out, d, a, h, b, w, c)
    x = x.permute(0, 1, *(i for axis in range(dims) for i in (2 + dims + axis, 2 + axis)))
    return x.reshape(n, out, *(2 * side for side in sides))


class MatmulConvTranspose(nn.Module):
    """The stride-2 transposed conv's forward as a per-pixel matrix product and a depth-to-space;
    mixed into PyTorch's layer of each dimensionality, whose parameters it keeps.

    Exact: the output's 2x2 (2x2x2) blocks do not overlap, so output pixel (2i+a, 2j+b)
    is input pixel (i, j) times kernel tap (a, b): a 1x1 conv to 2**dims times the
    channels, then a depth-to-space.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_ch, out_ch, *taps = self.weight.shape
        dims, blocks = len(taps), 2 ** len(taps)
        # (in, out, *taps) -> (out * blocks, in, 1, ...), channels ordered (out, *taps)
        weight = self.weight.permute(1, *range(2, 2 + dims), 0).reshape(out_ch * blocks, in_ch, *(1,) * dims)
        return depth_to_space(_CONV_FUNCTION[dims](x, weight, self.bias.repeat_interleave(blocks)), dims)


class MatmulConvTranspose2d(MatmulConvTranspose, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d``'s parameters, the forward of MatmulConvTranspose."""


class MatmulConvTranspose3d(MatmulConvTranspose, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d``'s parameters, the forward of MatmulConvTranspose."""


def transposed_upconv(in_ch: int, out_ch: int, *, matmul: bool, dims: int = 2) -> nn.Module:
    """The 2x2 (2x2x2) stride-2 up-convolution, as PyTorch's layer or as MatmulConvTranspose."""
    layer = {2: MatmulConvTranspose2d, 3: MatmulConvTranspose3d}[dims] if matmul else CONV_TRANSPOSE[dims]
    return layer(in_ch, out_ch, 2, stride=2)


class Up(DoubleConv):
    """Up-sampling, concat([skip, upsampled]), then a DoubleConv: ``up{i}``.

    The up-sampling is the stride-2 transposed conv ``upconv``, or with
    ``upsample="bilinear"`` a bilinear (trilinear in 3D) x2 with half-pixel
    centres followed by the 1x1 conv ``upconv``.
    """

    def __init__(self, spec: UNetSpec, in_ch: int, out_ch: int, *, upconv_matmul: bool) -> None:
        nn.Module.__init__(self)
        # Registered before the convs so that the state_dict follows the data.
        if spec.upsample == "transpose":
            self.resize = nn.Identity()
            self.upconv = transposed_upconv(in_ch, out_ch, matmul=upconv_matmul, dims=spec.dims)
        else:
            self.resize = nn.Upsample(scale_factor=2, mode=_INTERPOLATION[spec.dims], align_corners=False)
            self.upconv = CONV[spec.dims](in_ch, out_ch, 1)
        self._add_convs(spec, in_ch, out_ch)  # skip (out_ch) + upsampled (out_ch) = in_ch
        self.pad_to_skip = spec.pad_to_skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upconv(self.resize(x))
        if self.pad_to_skip:
            x = pad_to(x, *skip.shape[2:])
        else:
            skip = center_crop(skip, *x.shape[2:])
        return super().forward(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, spec: UNetSpec, *, upconv_matmul: bool = False) -> None:
        super().__init__()
        self.spec = spec
        for i in range(spec.depth + 1):
            in_ch = spec.channels(i - 1) if i else spec.in_channels
            setattr(self, f"down{i}", DoubleConv(spec, in_ch, spec.channels(i)))
        for i in reversed(range(spec.depth)):
            up = Up(spec, spec.channels(i + 1), spec.channels(i), upconv_matmul=upconv_matmul)
            setattr(self, f"up{i}", up)
        self.head = CONV[spec.dims](spec.width, spec.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_exporting():  # int() would fix a symbolic size; impls/export.py checks them
            self.spec.check_input(tuple(x.shape))
        skips = []
        for i in range(self.spec.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            x = _MAX_POOL[self.spec.dims](x, 2)
        x = getattr(self, f"down{self.spec.depth}")(x)
        for i in reversed(range(self.spec.depth)):
            x = getattr(self, f"up{i}")(x, skips[i])
        return self.head(x)


def build(spec: UNetSpec, dtype: torch.dtype = torch.float32, *, upconv_matmul: bool = False) -> UNet:
    """A new U-Net with PyTorch's default initialisation, in train mode.

    ``upconv_matmul`` computes the transposed convs as MatmulConvTranspose2d.
    """
    return UNet(spec, upconv_matmul=upconv_matmul).to(dtype)


def predictor(model: UNet) -> Callable[[np.ndarray], np.ndarray]:
    """For impls.tiling: a float32 channels-first numpy batch (NCHW, NCDHW) to logits in the same
    layout, in eval mode, on the model's device."""
    parameter = next(model.parameters())

    @torch.no_grad()
    def predict(batch: np.ndarray) -> np.ndarray:
        model.eval()
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(parameter.device, parameter.dtype)
        return model(x).float().cpu().numpy()

    return predict


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """mean over pixels of w(x) * CE(x); NCHW (NCDHW) logits, (N, H, W) ((N, D, H, W)) labels and weights.

    Computed in float32 at least (bfloat16 logits are promoted), as autocast does.
    """
    pixel = F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="none"
    )
    return (pixel if weights is None else pixel * weights).mean()
