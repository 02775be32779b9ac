"""The U-Net in PyTorch (NCHW), built from a UNetSpec.

Mirrors ``flax_unet.py`` block for block and name for name; the module names
are the canonical weight names of ``UNetSpec.param_shapes``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from impls.spec import KERNEL, UNetSpec

# PyTorch's BatchNorm defaults, written out because they are part of the contract.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def conv3x3(spec: UNetSpec, in_ch: int, out_ch: int) -> nn.Conv2d:
    padding = 1 if spec.padding == "same" else 0
    return nn.Conv2d(in_ch, out_ch, KERNEL, padding=padding, bias=spec.conv_bias)


def norm(spec: UNetSpec, channels: int) -> nn.Module:
    if spec.norm == "none":
        return nn.Identity()
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero-pad to (h, w): half the difference on the top and left, the rest after."""
    dy, dx = h - x.shape[-2], w - x.shape[-1]
    return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])


class DoubleConv(nn.Module):
    """(3x3 conv -> norm -> ReLU) twice: ``down{i}``."""

    def __init__(self, spec: UNetSpec, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self._add_convs(spec, in_ch, out_ch)

    def _add_convs(self, spec: UNetSpec, in_ch: int, out_ch: int) -> None:
        self.conv1 = conv3x3(spec, in_ch, out_ch)
        self.norm1 = norm(spec, out_ch)
        self.conv2 = conv3x3(spec, out_ch, out_ch)  # out_ch in, not in_ch: a common bug
        self.norm2 = norm(spec, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class BilinearUpconv(nn.Conv2d):
    """Bilinear x2 (half-pixel centres), then this 1x1 conv: the ``"bilinear"`` up-conv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return super().forward(x)


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """The 2x2 stride-2 transposed conv as a per-pixel matrix product and a depth-to-space.

    Exact: the output's 2x2 blocks do not overlap, so output pixel (2i+a, 2j+b)
    is input pixel (i, j) times kernel tap (a, b): a 1x1 conv to 4x the
    channels, then ``pixel_shuffle``. Same parameters as ``nn.ConvTranspose2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_ch, out_ch = self.weight.shape[:2]
        # (in, out, a, b) -> (out * 4, in, 1, 1), channels ordered (out, a, b) as pixel_shuffle wants
        weight = self.weight.permute(1, 2, 3, 0).reshape(out_ch * 4, in_ch, 1, 1)
        return F.pixel_shuffle(F.conv2d(x, weight, self.bias.repeat_interleave(4)), 2)


def transposed_upconv(in_ch: int, out_ch: int, *, matmul: bool) -> nn.ConvTranspose2d:
    """The 2x2 stride-2 up-convolution, as PyTorch's layer or as MatmulConvTranspose2d."""
    layer = MatmulConvTranspose2d if matmul else nn.ConvTranspose2d
    return layer(in_ch, out_ch, 2, stride=2)


class Up(DoubleConv):
    """Up-convolution, concat([skip, upsampled]), then a DoubleConv: ``up{i}``."""

    def __init__(self, spec: UNetSpec, in_ch: int, out_ch: int, *, upconv_matmul: bool) -> None:
        nn.Module.__init__(self)
        # Registered before the convs so that the state_dict follows the data.
        if spec.upsample == "transpose":
            self.upconv = transposed_upconv(in_ch, out_ch, matmul=upconv_matmul)
        else:
            self.upconv = BilinearUpconv(in_ch, out_ch)
        self._add_convs(spec, in_ch, out_ch)  # skip (out_ch) + upsampled (out_ch) = in_ch
        self.pad_to_skip = spec.pad_to_skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upconv(x)
        if self.pad_to_skip:
            x = pad_to(x, skip.shape[-2], skip.shape[-1])
        else:
            skip = center_crop(skip, x.shape[-2], x.shape[-1])
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
        self.head = nn.Conv2d(spec.width, spec.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_exporting():  # int() would fix a symbolic size; impls/export.py checks them
            self.spec.check_input(tuple(x.shape), layout="NCHW")
        skips = []
        for i in range(self.spec.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
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
    """For impls.tiling: a float32 NCHW numpy batch to NCHW logits, in eval mode, on the model's device."""
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
    """mean over pixels of w(x) * CE(x); NCHW logits, (N, H, W) labels and weights.

    Computed in float32 at least (bfloat16 logits are promoted), as autocast does.
    """
    pixel = F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="none"
    )
    return (pixel if weights is None else pixel * weights).mean()
