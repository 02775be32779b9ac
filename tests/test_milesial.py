"""Importing milesial/Pytorch-UNet checkpoints: exact at every size the original accepts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bench.gate import err
from impls import convert, flax_unet, torch_unet
from tests import milesial_reference
from tests.helpers import nchw_to_nhwc, nhwc_to_nchw


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    torch.manual_seed(0)
    model = milesial_reference.UNet(n_channels=3, n_classes=2, width=8)
    with torch.no_grad():  # random BatchNorm statistics and affine parameters, not the defaults
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(original, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("milesial") / "checkpoint.pth"
    torch.save({**original.state_dict(), "mask_values": [0, 1]}, path)  # as its train.py saves it
    return str(path)


@pytest.mark.parametrize(
    ("height", "width"), [(64, 48), (75, 50), (33, 17)], ids=["divisible", "odd", "tiny"]
)
def test_both_models_compute_what_the_original_computes(
    original, checkpoint, height: int, width: int
) -> None:
    weights, spec = convert.from_milesial(checkpoint)
    assert spec.pad_to_skip and not spec.conv_bias and spec.in_channels == 3 and spec.width == 8
    x = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        want = original(torch.tensor(x)).numpy()
    ours = convert.to_torch(weights, torch_unet.build(spec)).eval()
    with torch.no_grad():
        assert err(ours(torch.tensor(x)).numpy(), want) <= 1e-5
    flax_model = convert.to_flax(weights, flax_unet.abstract(spec)).eval()
    assert err(nhwc_to_nchw(flax_model(jnp.asarray(nchw_to_nhwc(x)))), want) <= 1e-5


def test_a_state_dict_in_memory_and_the_command_line(original, checkpoint, tmp_path) -> None:
    weights, spec = convert.from_milesial(original.state_dict())
    target = tmp_path / "unet.safetensors"
    assert convert.main(["from-milesial", checkpoint, str(target)]) == 0
    loaded, loaded_spec = convert.load(target)
    assert loaded_spec == spec
    for name, array in weights.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_an_unknown_key_is_named(original) -> None:
    state = {**original.state_dict(), "down2.attention.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"down2\.attention\.weight"):
        convert.from_milesial(state)


def test_the_bilinear_variant_is_refused_with_what_differs(original) -> None:
    state = {k: v for k, v in original.state_dict().items() if ".up." not in k}  # no learned up-conv
    with pytest.raises(ValueError, match=r"bilinear=True.*align_corners=True"):
        convert.from_milesial(state)


def test_not_a_milesial_checkpoint() -> None:
    with pytest.raises(ValueError, match="not a milesial"):
        convert.from_milesial({"down0.conv1.weight": torch.zeros(1)})


def test_pad_to_skip_needs_same_padding() -> None:
    with pytest.raises(ValueError, match="pad_to_skip=True: expected padding='same'"):
        convert.UNetSpec(pad_to_skip=True, padding="valid")
