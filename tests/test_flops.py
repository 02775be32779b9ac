"""The analytic FLOP count against torch.utils.flop_counter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import gflop_per_image
from impls import torch_unet
from impls.spec import UNetSpec


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        (UNetSpec(width=4, depth=3), 48),
        (UNetSpec(width=4, depth=2, padding="valid", upsample="bilinear", in_channels=3), 44),
        (UNetSpec(width=2, depth=1, norm="none", conv_bias=False, num_classes=5), 10),
        (UNetSpec(), 64),
        (UNetSpec(width=2, depth=2, dims=3, norm="instance"), 16),
        (UNetSpec(width=2, depth=1, dims=3, padding="valid", upsample="bilinear"), 20),
    ],
)
def test_gflop_matches_torch_flop_counter(spec: UNetSpec, size: int) -> None:
    model = torch_unet.build(spec)
    batch = 2
    x = torch.randn(batch, spec.in_channels, *(size,) * spec.dims)
    labels = torch.randint(0, spec.num_classes, (batch, *spec.output_size(*(size,) * spec.dims)))
    with FlopCounterMode(display=False) as forward:
        model(x)
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(model(x), labels).backward()
    assert gflop_per_image(spec, size, "infer") * 1e9 * batch == forward.get_total_flops()
    assert gflop_per_image(spec, size, "train") * 1e9 * batch == step.get_total_flops()


def test_bad_size_and_task() -> None:
    with pytest.raises(ValueError, match="nearest valid: 48 and 64"):
        gflop_per_image(UNetSpec(), 50, "infer")
    with pytest.raises(ValueError, match="task 'eval'"):
        gflop_per_image(UNetSpec(), 64, "eval")
