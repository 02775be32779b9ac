"""UNetSpec: validation, shape rules and the canonical table."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from impls import convert, flax_unet, torch_unet
from impls.spec import UNetSpec
from tests.helpers import random_weights


def test_defaults() -> None:
    assert dataclasses.asdict(UNetSpec()) == dict(
        in_channels=1,
        num_classes=2,
        width=64,
        depth=4,
        padding="same",
        norm="batch",
        upsample="transpose",
        conv_bias=True,
        pad_to_skip=False,
        dims=2,
        activation="relu",
    )


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("in_channels", 0, "integer >= 1"),
        ("num_classes", 1.5, "integer >= 1"),
        ("width", -64, "integer >= 1"),
        ("depth", True, "integer >= 1"),
        ("padding", "reflect", "'same', 'valid'"),
        ("norm", "group", "'batch', 'instance', 'none'"),
        ("upsample", "nearest", "'transpose', 'bilinear'"),
        ("conv_bias", 1, "True or False"),
        ("dims", 1, "2, 3"),
        ("dims", True, "2, 3"),
        ("activation", "gelu", "'relu', 'leaky_relu'"),
    ],
)
def test_bad_field_names_field_value_and_allowed(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        UNetSpec(**{field: value})
    assert f"UNetSpec.{field}={value!r}" in str(info.value)
    assert allowed in str(info.value)


def test_paper_case() -> None:
    assert UNetSpec(padding="valid").output_size(572, 572) == (388, 388)


def test_the_3d_papers_case() -> None:
    """Çiçek et al. 2016: 132x132x116 in, 44x44x28 out, at depth 3 with valid convs."""
    spec = UNetSpec(dims=3, depth=3, padding="valid")
    assert spec.output_size(132, 132, 116) == (44, 44, 28)
    assert spec.check_input((1, 1, 132, 132, 116)) == (44, 44, 28)
    assert spec.check_input((1, 132, 132, 116, 1), layout="NDHWC") == (44, 44, 28)
    assert spec.param_shapes()["down0.conv1.weight"] == (64, 1, 3, 3, 3)
    assert spec.param_shapes()["up2.upconv.weight"] == (512, 256, 2, 2, 2)
    assert spec.param_shapes()["head.weight"] == (2, 64, 1, 1, 1)
    assert spec.conv_layers(132)[0].taps == 27


@pytest.mark.parametrize(
    ("shape", "layout", "match"),
    [
        (
            (1, 1, 132, 132, 117),
            None,
            r"width 117 is not a valid input size \(padding='valid' needs an even size "
            r"at every 2x2x2 max-pool.*nearest valid: 116 and 124",
        ),
        ((1, 1, 130, 132, 116), None, "depth 130 .*nearest valid: 124 and 132"),
        ((1, 1, 132, 132), None, "expected a 5-D NCDHW batch, got 4 dimensions; add a batch axis"),
        ((1, 132, 132, 116, 1), "NHWC", "layout='NHWC': expected 'NCDHW' or 'NDHWC' \\(dims=3\\)"),
        ((1, 132, 132, 116, 2), "NDHWC", r"expected 1 channel\(s\) on axis 4, got 2"),
    ],
)
def test_3d_input_errors_name_the_axis_and_the_nearest_sizes(
    shape: tuple, layout: str | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        UNetSpec(dims=3, depth=3, padding="valid").check_input(shape, layout=layout)


def test_output_size_takes_one_side_per_axis() -> None:
    with pytest.raises(
        ValueError, match=r"UNetSpec\(dims=3\): expected 3 sides \(depth, height, width\), got \(32, 32\)"
    ):
        UNetSpec(dims=3).output_size(32, 32)
    with pytest.raises(ValueError, match=r"expected 2 sides \(height, width\), got \(32, 32, 32\)"):
        UNetSpec().output_size(32, 32, 32)


def test_instance_norm_has_affine_weights_and_no_statistics_and_zeroes_its_conv_biases() -> None:
    spec = UNetSpec(dims=3, width=4, depth=1, norm="instance", padding="valid")
    table = spec.param_shapes()
    assert [n for n in table if n.startswith("down0.norm1")] == ["down0.norm1.weight", "down0.norm1.bias"]
    assert spec.zero_gradient_biases() == {n for n in table if ".conv" in n and n.endswith(".bias")} | {
        "up0.upconv.bias"
    }
    assert UNetSpec(norm="none").zero_gradient_biases() == set()


def test_the_serialised_2d_spec_is_what_it_was_before_3d() -> None:
    """Fields added for 3D are left out at their defaults: 2D files, keys and reports stay byte-identical."""
    assert UNetSpec().to_json() == (
        '{"conv_bias": true, "depth": 4, "in_channels": 1, "norm": "batch", "num_classes": 2, '
        '"pad_to_skip": false, "padding": "same", "upsample": "transpose", "width": 64}'
    )
    volumetric = UNetSpec(dims=3, norm="instance", activation="leaky_relu")
    assert '"dims": 3' in volumetric.to_json() and '"activation": "leaky_relu"' in volumetric.to_json()
    assert UNetSpec.from_json(volumetric.to_json()) == volumetric
    assert UNetSpec.from_json(UNetSpec(width=8).to_json()).dims == 2
    assert repr(UNetSpec(width=8)) == (
        "UNetSpec(in_channels=1, num_classes=2, width=8, depth=4, padding='same', norm='batch', "
        "upsample='transpose', conv_bias=True, pad_to_skip=False)"
    )
    assert repr(volumetric).endswith("pad_to_skip=False, dims=3, activation='leaky_relu')")


@pytest.mark.parametrize(
    ("padding", "side", "below", "above"),
    [("valid", 570, 556, 572), ("same", 100, 96, 112), ("same", 8, None, 16), ("valid", 573, 572, 588)],
)
def test_wrong_size_names_nearest_valid_sizes(padding: str, side: int, below: int | None, above: int) -> None:
    spec = UNetSpec(padding=padding)
    with pytest.raises(ValueError) as info:
        spec.output_size(side, 572 if padding == "valid" else 64)
    message = str(info.value)
    assert f"height {side} is not a valid input size" in message
    expected = f"{below} and {above}" if below else f"nearest valid: {above}"
    assert expected in message
    for size in (below, above):
        if size:
            spec.output_size(size, size)  # the named sizes really are valid


@pytest.mark.parametrize(("padding", "smallest", "deepest"), [("same", 16, 15), ("valid", 188, 12)])
def test_smallest_valid_size_and_the_deepest_useful_depth(padding: str, smallest: int, deepest: int) -> None:
    spec = UNetSpec(padding=padding)
    assert spec.smallest_valid_size() == smallest
    assert spec.nearest_valid_sizes(smallest)[0] > smallest  # nothing valid below the smallest
    assert spec.check_side(smallest) == spec.output_size(smallest, smallest)[0]
    with pytest.raises(
        ValueError, match=rf"side {smallest - 1} is not a valid input size .*; nearest valid: {smallest}$"
    ):
        spec.check_side(smallest - 1)
    assert spec.max_depth() == deepest
    assert UNetSpec(depth=deepest, padding=padding).smallest_valid_size() is not None
    assert UNetSpec(depth=deepest + 1, padding=padding).smallest_valid_size() is None


def test_both_sides_reported() -> None:
    with pytest.raises(ValueError, match=r"height 570.*width 571"):
        UNetSpec(padding="valid").output_size(570, 571)


@pytest.mark.parametrize(
    ("shape", "layout", "match"),
    [
        ((1, 3, 64, 64), "NCHW", r"expected 1 channel\(s\) on axis 1, got 3"),
        ((1, 64, 64, 3), "NHWC", r"expected 1 channel\(s\) on axis 3, got 3"),
        ((1, 64, 64), "NCHW", "expected a 4-D NCHW batch, got 3 dimensions; add a batch axis"),
        ((2, 1, 60, 64), "NCHW", "height 60 .* nearest valid: 48 and 64"),
    ],
)
def test_check_input_errors(shape: tuple, layout: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNetSpec().check_input(shape, layout=layout)


def test_both_frameworks_raise_the_spec_error() -> None:
    spec = UNetSpec(width=2, depth=2, padding="valid")
    with pytest.raises(ValueError, match=r"height 50 .* nearest valid: 48 and 52"):
        torch_unet.build(spec)(torch.zeros(1, 1, 50, 52))
    flax_model = convert.to_flax(random_weights(spec), flax_unet.abstract(spec))
    with pytest.raises(ValueError, match=r"height 50 .* nearest valid: 48 and 52"):
        flax_model(jnp.zeros((1, 50, 52, 1)))
    with pytest.raises(ValueError, match="axis 3, got 2"):
        flax_model(jnp.zeros((1, 52, 52, 2)))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_output_size_matches_the_models(padding: str, depth: int) -> None:
    spec = UNetSpec(width=2, depth=depth, padding=padding, num_classes=3)
    h, w = (2**depth * 3, 2**depth * 5) if padding == "same" else _valid_pair(spec)
    out = spec.output_size(h, w)
    model = torch_unet.build(spec).eval()
    assert model(torch.zeros(1, 1, h, w)).shape == (1, 3, *out)
    # traced, not run: the shapes of the model's own forward, without compiling it
    flax_out = nnx.eval_shape(
        lambda model, x: model(x), flax_unet.abstract(spec).eval(), jnp.zeros((1, h, w, 1))
    )
    assert flax_out.shape == (1, *out, 3)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_3d_output_size_matches_the_models(padding: str) -> None:
    spec = UNetSpec(width=2, depth=2, padding=padding, num_classes=3, dims=3, norm="instance")
    sides = (12, 8, 20) if padding == "same" else (_valid_pair(spec)[0], *_valid_pair(spec))
    out = spec.output_size(*sides)
    model = torch_unet.build(spec).eval()
    assert model(torch.zeros(1, 1, *sides)).shape == (1, 3, *out)
    flax_out = nnx.eval_shape(
        lambda model, x: model(x), flax_unet.abstract(spec).eval(), jnp.zeros((1, *sides, 1))
    )
    assert flax_out.shape == (1, *out, 3)


def _valid_pair(spec: UNetSpec) -> tuple[int, int]:
    sides = []
    for side in range(1, 400):
        try:
            spec.check_side(side)
            sides.append(side)
        except ValueError:
            continue
    return sides[0], sides[2]


@pytest.mark.parametrize(
    "spec",
    [
        UNetSpec(width=4, depth=2),
        UNetSpec(width=4, depth=3, norm="none", conv_bias=False, upsample="bilinear", in_channels=3),
        UNetSpec(width=2, depth=1, padding="valid", conv_bias=False),
        UNetSpec(width=2, depth=2, dims=3, norm="instance", upsample="bilinear", activation="leaky_relu"),
        UNetSpec(width=2, depth=2, dims=3, padding="valid", conv_bias=False),
    ],
)
def test_param_shapes_is_the_torch_state_dict_and_the_flax_state(spec: UNetSpec) -> None:
    state = torch_unet.build(spec).state_dict()
    torch_table = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert list(spec.param_shapes().items()) == list(torch_table.items())
    # the modules the Flax model is built of, zeros of their shapes (its random initialisation
    # compiles for seconds per shape and changes no shape)
    graphdef, shapes = nnx.split(flax_unet.abstract(spec))
    zeros = nnx.merge(graphdef, jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), shapes))
    flax_table = {k: v.shape for k, v in convert.from_flax(zeros).items()}
    assert list(flax_table.items()) == list(spec.param_shapes().items())


def test_param_table_of_the_default_spec() -> None:
    table = UNetSpec().param_shapes()
    assert list(table)[:6] == [
        "down0.conv1.weight",
        "down0.conv1.bias",
        "down0.norm1.weight",
        "down0.norm1.bias",
        "down0.norm1.running_mean",
        "down0.norm1.running_var",
    ]
    assert table["down4.conv2.weight"] == (1024, 1024, 3, 3)
    assert table["up3.upconv.weight"] == (1024, 512, 2, 2)
    assert table["up3.conv1.weight"] == (512, 1024, 3, 3)
    assert table["up0.conv2.weight"] == (64, 64, 3, 3)
    assert table["head.weight"] == (2, 64, 1, 1)
    assert list(table)[-2:] == ["head.weight", "head.bias"]


def test_parameter_count_of_the_popular_pytorch_unet() -> None:
    """milesial/Pytorch-UNet's UNet(3, 2) (bias-free convs before BatchNorm): 31,037,698."""
    table = UNetSpec(in_channels=3, conv_bias=False).param_shapes()
    assert sum(int(np.prod(s)) for k, s in table.items() if "running" not in k) == 31_037_698


def test_bilinear_upconv_shape() -> None:
    table = UNetSpec(upsample="bilinear").param_shapes()
    assert table["up3.upconv.weight"] == (512, 1024, 1, 1)


def test_spec_json_round_trip_and_unknown_field() -> None:
    spec = UNetSpec(width=8, padding="valid", conv_bias=False)
    assert UNetSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown UNetSpec field"):
        UNetSpec.from_json('{"widht": 8}')
