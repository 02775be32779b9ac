"""Analytic FLOPs of a U-Net, from its spec alone.

Counts the multiply-adds of convolutions (2 FLOPs each), as
``torch.utils.flop_counter`` does; BatchNorm, ReLU, pooling, bias adds and the
bilinear interpolation are a few percent and left out by both. A training step
is the forward, the gradient with respect to every conv's weights (as many
FLOPs as its forward) and with respect to every conv's input (as many again),
except the first conv's input, which needs no gradient.
"""

from __future__ import annotations

from impls.spec import UNetSpec


def _conv_flops(spec: UNetSpec, size: int) -> list[int]:
    """Forward FLOPs of every conv for one square image (cubic volume), in the order they run."""
    return [
        2 * layer.taps * layer.cin * layer.cout * layer.side**spec.dims for layer in spec.conv_layers(size)
    ]


def gflop_per_image(spec: UNetSpec, size: int, task: str) -> float:
    """GFLOP for one ``size`` x ``size`` image (``size``**3 volume in 3D): ``task`` "infer"
    (forward) or "train" (step)."""
    spec.check_input((1, spec.in_channels, *(size,) * spec.dims))
    flops = _conv_flops(spec, size)
    forward = sum(flops)
    if task == "infer":
        return forward / 1e9
    if task == "train":
        return (3 * forward - flops[0]) / 1e9
    raise ValueError(f"task {task!r}: expected 'train' or 'infer'")
