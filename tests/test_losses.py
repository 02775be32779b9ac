"""The paper's weight map and the pixel-weighted cross-entropy in both frameworks."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from bench import cells
from impls import flax_unet, torch_unet
from impls.losses import class_balance, weight_map


def _untruncated(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula as written: a full distance transform per cell, all pixels."""
    labels = [label for label in np.unique(instances) if label > 0]
    distances = np.sort(
        np.stack([ndimage.distance_transform_edt(instances != label) for label in labels]), axis=0
    )
    border = np.zeros(instances.shape)
    if len(labels) >= 2:
        border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    foreground = instances > 0
    return class_balance(foreground) + np.where(foreground, 0, border)


@pytest.mark.parametrize("seed", [0, 1])
def test_truncated_map_matches_the_formula(seed: int) -> None:
    instances = cells.generate(1, 128, seed=seed).instances[0]
    w0, sigma = 10.0, 5.0
    got = weight_map(instances, w0=w0, sigma=sigma)
    want = _untruncated(instances, w0, sigma)
    assert np.abs(got - want).max() <= 1e-4 * w0
    assert got.dtype == np.float32 and got.shape == instances.shape
    assert got.max() > 5  # the gaps between touching cells are heavily weighted


def test_a_volume_of_identical_slices_has_its_slices_map_and_a_volume_matches_the_formula() -> None:
    """Cells that run through every slice are nearest within the slice, so the 3D map of such a
    volume is the 2D map of each slice; on a volume of blobs, the map is the formula in 3D."""
    image = cells.generate(1, 64, seed=2).instances[0]
    volume = np.repeat(image[None], 5, axis=0)
    np.testing.assert_allclose(weight_map(volume), np.repeat(weight_map(image)[None], 5, axis=0), rtol=1e-6)
    blobs = cells.generate(1, 32, seed=3, dims=3).instances[0]
    got = weight_map(blobs, w0=10.0, sigma=3.0)
    assert np.abs(got - _untruncated(blobs, 10.0, 3.0)).max() <= 1e-4 * 10.0
    assert got.max() > 5  # the surfaces between touching blobs are heavily weighted


def test_class_balance_averages_one_and_border_needs_two_cells() -> None:
    instances = np.zeros((40, 40), np.int32)
    instances[5:15, 5:15] = 1
    one_cell = weight_map(instances)
    assert one_cell.mean() == pytest.approx(1.0)
    assert np.allclose(one_cell[instances == 0], one_cell[0, 0])  # no border term with one cell
    instances[5:15, 17:27] = 2  # a second cell, two pixels away
    two = weight_map(instances, w0=10, sigma=5)
    gap = two[10, 15:17]
    assert (gap > two[35, 35] + 5).all()  # between the cells: w_c + nearly w0
    assert np.allclose(two[instances > 0], two[instances > 0][0])  # cells: w_c only


@pytest.mark.parametrize(
    ("instances", "kwargs", "match"),
    [
        (
            np.zeros((4, 4, 1, 1), np.int32),
            {},
            r"instances: expected an \(H, W\) image or a \(D, H, W\) volume, got shape \(4, 4, 1, 1\)",
        ),
        (np.zeros((4, 4), np.float32), {}, r"expected an integer image \(0 background, .*\), got float32$"),
        (np.zeros((4, 4), bool), {}, "got bool; a mask is not instances: label its cells first"),
        (np.zeros((4, 4), np.int32), dict(sigma=0), "sigma=0: expected a finite number of pixels > 0"),
        (np.zeros((4, 4), np.int32), dict(sigma=float("nan")), "sigma=nan: expected a finite number"),
        (np.zeros((4, 4), np.int32), dict(w0=-1.0), r"w0=-1\.0: expected a finite weight >= 0"),
        (np.zeros((4, 4), np.int32), dict(w0=float("inf")), "w0=inf: expected a finite weight >= 0"),
        (np.zeros((4, 4), np.int32), dict(ignore_label=0), "ignore_label=0: 0 is background"),
        (np.zeros((4, 4), np.int32), dict(ignore_label=1.5), r"ignore_label=1\.5: expected an integer$"),
    ],
)
def test_weight_map_refuses_bad_input(instances: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        weight_map(instances, **kwargs)


def test_negative_labels_are_refused_unless_ignored() -> None:
    """-1 (or any negative "ignore" value) was weighted as background without a word."""
    instances = np.zeros((20, 20), np.int32)
    instances[2:6, 2:6] = 1
    instances[10:12, :] = -1
    instances[0, 0] = -3
    with pytest.raises(ValueError, match=re.escape("instances: negative labels (-3, -1) on 41 pixels")):
        weight_map(instances)
    with pytest.raises(ValueError, match=r"\(-3\) on 1 pixels.*: besides those, only ignore_label=-1$"):
        weight_map(instances, ignore_label=-1)


@pytest.mark.parametrize(("dtype", "ignore"), [(np.int32, -1), (np.uint8, 255)])
def test_ignored_pixels_weigh_nothing_and_are_neither_class(dtype: type, ignore: int) -> None:
    """Elsewhere: the map of the same labels with those pixels as background, but for the class
    balance, counted over the pixels that are not ignored."""
    plain = cells.generate(1, 64, seed=0).instances[0].astype(dtype)
    np.testing.assert_array_equal(weight_map(plain, ignore_label=ignore), weight_map(plain))  # none to ignore
    instances = plain.copy()
    instances[20:30, :] = ignore  # across cells and background
    got = weight_map(instances, ignore_label=ignore)
    ignored, kept = instances == ignore, instances != ignore
    as_background = np.where(ignored, 0, instances)
    border = weight_map(as_background) - class_balance(as_background > 0)  # the border term alone
    want = class_balance(as_background[kept] > 0) + border[kept]
    assert got.dtype == np.float32 and (got[ignored] == 0).all()
    np.testing.assert_allclose(got[kept], want, rtol=1e-5)
    assert not np.allclose(got[kept], weight_map(as_background)[kept])  # they are not background


def test_weighted_cross_entropy_matches_across_frameworks() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 8, 9)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 8, 9))
    weights = rng.uniform(0.5, 10, (2, 8, 9)).astype(np.float32)
    ours = torch_unet.weighted_cross_entropy(
        torch.tensor(logits), torch.tensor(labels), torch.tensor(weights)
    )
    theirs = flax_unet.weighted_cross_entropy(
        jnp.asarray(logits.transpose(0, 2, 3, 1)), jnp.asarray(labels), jnp.asarray(weights)
    )
    assert abs(float(ours) - float(theirs)) <= 1e-6 * abs(float(ours))
    by_hand = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction="none") * torch.tensor(
        weights
    )
    assert float(ours) == pytest.approx(float(by_hand.mean()), rel=1e-6)
    unweighted = torch_unet.weighted_cross_entropy(torch.tensor(logits), torch.tensor(labels))
    assert float(unweighted) == pytest.approx(
        float(F.cross_entropy(torch.tensor(logits), torch.tensor(labels)))
    )
