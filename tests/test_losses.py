"""The paper's weight map and the pixel-weighted cross-entropy in both frameworks."""

from __future__ import annotations

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


def test_weight_map_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="integer image"):
        weight_map(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="sigma=0"):
        weight_map(np.zeros((4, 4), np.int32), sigma=0)


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
