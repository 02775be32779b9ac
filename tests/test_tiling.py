"""Overlap-tile prediction (impls/tiling.py): exact for the paper's network, in both frameworks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from impls import convert, flax_unet, tiling, torch_unet
from impls.checks import err
from impls.spec import UNetSpec
from tests.helpers import random_weights

VALID = UNetSpec(width=4, depth=2, padding="valid")  # border 20: a 60 px tile gives 20 px out
SAME = UNetSpec(width=4, depth=2)


@pytest.fixture(scope="module")
def predictors() -> dict:
    out = {}
    for spec in (VALID, SAME):
        weights = random_weights(spec, seed=3)
        out[spec.padding] = (
            torch_unet.predictor(convert.to_torch(weights, torch_unet.build(spec))),
            flax_unet.predictor(convert.to_flax(weights, flax_unet.abstract(spec))),
        )
    return out


def _one_pass_over_the_mirrored_image(predict, image: np.ndarray, spec: UNetSpec, tile: int) -> np.ndarray:
    """What predict_tiled must equal: one pass over the image (or volume) mirrored as it mirrors it."""
    sides = image.shape[1:]
    last = tiling.tile_positions(sides, spec, tile)[-1]
    out = spec.check_side(tile)
    border = (tile - out) // 2
    pads = [(border, border + start + out - n) for start, n in zip(last, sides, strict=True)]
    mirrored = np.pad(image, ((0, 0), *pads), mode="reflect")
    return predict(mirrored[None])[0][(slice(None), *(slice(0, n) for n in sides))]


@pytest.mark.parametrize("framework", [0, 1], ids=["torch", "flax"])
@pytest.mark.parametrize(("height", "width", "tile"), [(100, 130, 60), (61, 47, 52), (15, 9, 44)])
def test_valid_tiling_equals_one_pass(predictors, framework: int, height: int, width: int, tile: int) -> None:
    predict = predictors["valid"][framework]
    image = np.random.default_rng(height).normal(size=(1, height, width)).astype(np.float32)
    tiled = tiling.predict_tiled(predict, image, VALID, tile=tile, batch=3)
    assert tiled.shape == (VALID.num_classes, height, width)
    assert err(tiled, _one_pass_over_the_mirrored_image(predict, image, VALID, tile)) <= 1e-5


def test_paper_geometry() -> None:
    """572 px tiles give 388 px out; tiles step by 384 (a multiple of 16) and overlap by 4."""
    paper = UNetSpec(padding="valid")
    positions = tiling.tile_positions((1000, 1000), paper, 572)
    assert sorted({r for r, _ in positions}) == [0, 384, 768]
    assert (572 - paper.output_size(572, 572)[0]) // 2 == 92


def test_stitching_and_mirroring_reproduce_the_image() -> None:
    """With a 'network' that returns its input (cropped by the border), any tiling gives back the image."""
    image = np.random.default_rng(0).normal(size=(2, 77, 101)).astype(np.float32)
    valid = UNetSpec(in_channels=2, num_classes=2, width=4, depth=2, padding="valid")
    border = (60 - valid.output_size(60, 60)[0]) // 2
    cropped = tiling.predict_tiled(lambda x: x[:, :, border:-border, border:-border], image, valid, tile=60)
    np.testing.assert_array_equal(cropped, image)
    same = UNetSpec(in_channels=2, num_classes=2, width=4, depth=2)
    for blend in ("gaussian", "constant"):
        blended = tiling.predict_tiled(lambda x: x, image, same, tile=32, blend=blend)
        np.testing.assert_allclose(blended, image, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_same_padding_tiles_agree_across_frameworks(predictors, blend: str) -> None:
    image = np.random.default_rng(1).normal(size=(1, 70, 45)).astype(np.float32)
    torch_result, flax_result = (
        tiling.predict_tiled(p, image, SAME, tile=32, overlap=0.5, blend=blend) for p in predictors["same"]
    )
    assert torch_result.shape == (2, 70, 45)
    assert err(flax_result, torch_result) <= 1e-5


def test_gaussian_blend_weighs_tile_centres() -> None:
    window = tiling._window((32, 32), "gaussian")
    assert window[16, 16] > 50 * window[0, 0]
    assert window.shape == (32, 32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tile=50), "height 50 is not a valid input size .* nearest valid: 48 and 52"),
        (dict(tile=60, blend="cosine"), "blend='cosine'"),
        (dict(tile=60, overlap=1.0), r"overlap=1\.0: expected a fraction in \[0, 1\)"),
        (dict(tile=60, overlap=-0.1), r"overlap=-0\.1: expected a fraction in \[0, 1\)"),
        (dict(tile=60, overlap=float("nan")), r"overlap=nan: expected a fraction in \[0, 1\)"),
        (dict(tile=60, batch=0), "batch=0: expected an integer >= 1"),
        (dict(tile=60, batch=-2), "batch=-2: expected an integer >= 1"),
        (dict(tile=60, batch=2.5), r"batch=2\.5: expected an integer >= 1"),
        (dict(tile=60.0), r"tile=60\.0: expected an integer >= 1"),
        (dict(tile=True), "tile=True: expected an integer >= 1"),
        (dict(tile=(60, 60.5)), r"tile\[1\]=60\.5: expected an integer >= 1"),
        (dict(tile=(60, 60, 60)), r"tile=\(60, 60, 60\): expected one side or a \(height, width\) pair"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiling.predict_tiled(lambda x: x, np.zeros((1, 40, 40), np.float32), VALID, **kwargs)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((40, 40), r"image: expected a non-empty \(C, H, W\) array, got shape \(40, 40\)"),
        ((1, 0, 40), r"image: expected a non-empty \(C, H, W\) array, got shape \(1, 0, 40\)"),
        ((3, 40, 40), r"expected 1 channel\(s\) on axis 1, got 3"),
    ],
)
def test_bad_images(shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiling.predict_tiled(lambda x: x, np.zeros(shape, np.float32), SAME, tile=32)


def test_non_finite_pixels_are_refused_unless_allowed() -> None:
    image = np.zeros((2, 40, 40), np.float32)
    image[1, 3, 7] = np.nan
    image[0, 30, 2] = np.inf
    echo = UNetSpec(in_channels=2, num_classes=2, width=4, depth=2)  # the identity is a predictor of it
    message = (
        "image: 2 non-finite values (NaN or inf) of 3200, the first at (channel, row, column) (0, 30, 2); "
        "every tile that sees one would give NaN logits: clean the image, or pass allow_nonfinite=True"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        tiling.predict_tiled(lambda x: x, image, echo, tile=32)
    out = tiling.predict_tiled(lambda x: x, image, echo, tile=32, allow_nonfinite=True)
    assert np.isnan(out[1, 3, 7]) and np.isfinite(out[:, 39, 39]).all()  # in tiles without one: finite


def test_a_predictor_of_the_wrong_shape_is_refused() -> None:
    """One class where the spec has two would broadcast into the stitched logits without an error."""
    message = "predict returned shape (4, 1, 32, 32) for tiles of shape (4, 1, 32, 32): expected (4, 2, 32"
    with pytest.raises(ValueError, match=re.escape(message)):
        tiling.predict_tiled(lambda x: x, np.zeros((1, 40, 40), np.float32), SAME, tile=32)


# -- volumes ---------------------------------------------------------------------

VALID_3D = UNetSpec(width=2, depth=1, padding="valid", dims=3)  # border 8: a 22^3 tile gives 6^3 out
SAME_3D = UNetSpec(in_channels=2, num_classes=2, width=2, depth=2, dims=3)


@pytest.mark.parametrize("framework", [0, 1], ids=["torch", "flax"])
def test_valid_tiling_of_a_volume_equals_one_pass(framework: int) -> None:
    weights = random_weights(VALID_3D, seed=3)
    predict = (
        torch_unet.predictor(convert.to_torch(weights, torch_unet.build(VALID_3D))),
        flax_unet.predictor(convert.to_flax(weights, flax_unet.abstract(VALID_3D))),
    )[framework]
    volume = np.random.default_rng(5).normal(size=(1, 11, 15, 9)).astype(np.float32)
    tiled = tiling.predict_tiled(predict, volume, VALID_3D, tile=22, batch=4)
    assert tiled.shape == (VALID_3D.num_classes, 11, 15, 9)
    assert len(tiling.tile_positions(volume.shape[1:], VALID_3D, 22)) == 2 * 3 * 2  # steps of 6 voxels
    assert err(tiled, _one_pass_over_the_mirrored_image(predict, volume, VALID_3D, 22)) <= 1e-5


def _position_dependent(batch: np.ndarray) -> np.ndarray:
    """A 'network' whose output depends on where in the tile a voxel is: overlapping tiles
    disagree, so the blend's weights decide the result."""
    ramps = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in batch.shape[2:]), indexing="ij")
    return batch * (1.5 + ramps[0] * ramps[1]) + ramps[2] - 0.5 * ramps[0]


def test_the_gaussian_blend_is_monais_sliding_window_and_fails_when_its_sigma_is_off(monkeypatch) -> None:
    """MONAI's sliding_window_inference (overlap 0.5, mode "gaussian", sigma_scale 1/8), on a volume
    that is no whole number of steps on any axis: the same within 1e-5 (1e-7 here); 1.1x sigma,
    constant weights or no floor under the weights differ by far more."""
    import torch
    from monai.inferers import sliding_window_inference

    volume = np.random.default_rng(7).normal(size=(2, 37, 29, 45)).astype(np.float32)
    monai = sliding_window_inference(
        torch.from_numpy(volume[None]),
        roi_size=(16, 16, 16),
        sw_batch_size=4,
        predictor=lambda patches: torch.from_numpy(_position_dependent(patches.numpy())),
        overlap=0.5,
        mode="gaussian",
        sigma_scale=tiling.GAUSSIAN_SIGMA_SCALE,
    )[0].numpy()

    def ours(**options) -> np.ndarray:
        return tiling.predict_tiled(_position_dependent, volume, SAME_3D, tile=16, overlap=0.5, **options)

    assert err(ours(), monai) <= 1e-5
    assert err(ours(blend="constant"), monai) > 1e-2  # 0.18 here
    with monkeypatch.context() as patch:
        patch.setattr(tiling, "GAUSSIAN_FLOOR", 0.0)  # MONAI's floor of 1e-3 matters too (0.31)
        assert err(ours(), monai) > 1e-2
    monkeypatch.setattr(tiling, "GAUSSIAN_SIGMA_SCALE", tiling.GAUSSIAN_SIGMA_SCALE * 1.1)
    assert err(ours(), monai) > 1e-2  # 0.09 here


def test_mirroring_averages_every_flip_of_each_tile() -> None:
    volume = np.random.default_rng(8).normal(size=(2, 16, 16, 16)).astype(np.float32)
    mirrored = tiling.predict_tiled(_position_dependent, volume, SAME_3D, tile=16, mirror=True)
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]  # the batch's spatial axes
    want = np.mean([np.flip(_position_dependent(np.flip(volume[None], a)), a)[0] for a in flips], axis=0)
    assert err(mirrored, want) <= 1e-6
    assert err(tiling.predict_tiled(_position_dependent, volume, SAME_3D, tile=16), want) > 1e-2


@pytest.mark.parametrize(
    ("shape", "options", "match"),
    [
        (
            (2, 20, 20),
            dict(tile=16),
            r"image: expected a non-empty \(C, D, H, W\) array, got shape \(2, 20, 20\)",
        ),
        ((2, 20, 20, 20), dict(tile=(16, 16)), r"expected one side or a \(depth, height, width\) triple"),
        (
            (2, 20, 20, 20),
            dict(tile=(16, 16, 18)),
            "width 18 is not a valid input size .*nearest valid: 16 and 20",
        ),
        ((2, 20, 20, 20), dict(tile=16, mirror=1), "mirror=1: expected True or False"),
        ((2, 20, 20, 20), dict(tile=16, overlap=1.0), r"overlap=1\.0: expected a fraction in \[0, 1\)"),
    ],
)
def test_bad_volume_arguments(shape: tuple, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiling.predict_tiled(lambda x: x, np.zeros(shape, np.float32), SAME_3D, **options)


def test_non_finite_voxels_are_refused() -> None:
    volume = np.zeros((2, 20, 20, 20), np.float32)
    volume[1, 2, 3, 4] = np.inf
    with pytest.raises(
        ValueError, match=re.escape("the first at (channel, slice, row, column) (1, 2, 3, 4)")
    ):
        tiling.predict_tiled(lambda x: x, volume, SAME_3D, tile=16)
