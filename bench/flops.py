"""Analytic FLOPs of a U-Net, from its spec alone.

Counts the multiply-adds of convolutions (2 FLOPs each), as
``torch.utils.flop_counter`` does; BatchNorm, ReLU, pooling, bias adds and the
bilinear interpolation are a few percent and left out by both. A training step
is the forward, the gradient with respect to every conv's weights (as many
FLOPs as its forward) and with respect to every conv's input (as many again),
except the first conv's input, which needs no gradient.
"""

from __future__ import annotations

from impls.spec import VALID_CONV_SHRINK, UNetSpec


def _conv_flops(spec: UNetSpec, size: int) -> list[int]:
    """Forward FLOPs of every conv for one square image, in the order they run."""
    shrink = VALID_CONV_SHRINK if spec.padding == "valid" else 0
    flops: list[int] = []
    side = size

    def double_conv(side: int, cin: int, cout: int) -> int:
        for c in (cin, cout):
            side -= shrink
            flops.append(2 * 9 * c * cout * side * side)
        return side

    for i in range(spec.depth):
        side = double_conv(side, spec.channels(i - 1) if i else spec.in_channels, spec.channels(i))
        side //= 2
    side = double_conv(side, spec.channels(spec.depth - 1), spec.channels(spec.depth))
    for i in reversed(range(spec.depth)):
        cin, cout = spec.channels(i + 1), spec.channels(i)
        side *= 2
        per_pixel = 2 * cin * cout  # transposed 2x2 stride 2: one tap per output pixel; bilinear: a 1x1 conv
        flops.append(per_pixel * side * side)
        side = double_conv(side, cin, cout)
    flops.append(2 * spec.width * spec.num_classes * side * side)
    return flops


def gflop_per_image(spec: UNetSpec, size: int, task: str) -> float:
    """GFLOP for one ``size`` x ``size`` image: ``task`` "infer" (forward) or "train" (step)."""
    spec.check_input((1, spec.in_channels, size, size))
    flops = _conv_flops(spec, size)
    forward = sum(flops)
    if task == "infer":
        return forward / 1e9
    if task == "train":
        return (3 * forward - flops[0]) / 1e9
    raise ValueError(f"task {task!r}: expected 'train' or 'infer'")
