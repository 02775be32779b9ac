"""The synthetic cells, the segmentation measures, and a training run that learns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench import cells
from bench.train_cells import Config, _data, train, trajectories_agree


def test_generator_is_seeded_and_parts_touching_cells() -> None:
    a, b = cells.generate(3, 64, seed=5), cells.generate(3, 64, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (3, 1, 64, 64) and a.instances.shape == (3, 64, 64)
    assert not np.array_equal(a.images, cells.generate(3, 64, seed=6).images)
    for instances in a.instances:
        grown = ndimage.grey_dilation(instances, size=3)
        # no cell pixel has a pixel of another cell among its 8 neighbours
        assert not ((instances > 0) & (grown != instances) & (grown > 0)).any()
    assert sum(len(cells.touching_pairs(i)) for i in a.instances) >= 6


def test_measures_on_the_truth_and_on_merged_cells() -> None:
    instances = cells.generate(1, 96, seed=0).instances[0]
    separated, touching = cells.separated_fraction(instances > 0, instances)
    assert separated == touching > 0
    merged = ndimage.binary_closing(instances > 0, np.ones((3, 3)))  # closes the parting lines
    assert cells.separated_fraction(merged, instances)[0] < touching / 2
    assert cells.dice(instances > 0, instances > 0) == 1.0
    assert cells.dice(np.zeros_like(instances), instances > 0) == 0.0


def test_it_learns_and_border_weights_separate_touching_cells() -> None:
    """A small budget on a 2-core CPU: width 8, 200 steps, a few seconds per run."""
    config = Config(paths=("torch-eager", "jax"), steps=200, width=8, depth=3, size=64, batch=8)
    data = _data(config)
    runs = {
        (path, weighting): train(config, path, weighting, data)
        for weighting in ("border weights", "class balance only")
        for path in config.paths
    }
    for outcome in runs.values():
        assert outcome.dice > 0.9, (outcome.path, outcome.weighting, outcome.dice)
    with_border = runs[("torch-eager", "border weights")]
    without = runs[("torch-eager", "class balance only")]
    assert with_border.separated / with_border.touching > 0.4
    assert with_border.separated > 5 * without.separated
    assert trajectories_agree(list(runs.values()))
    assert runs[("jax", "border weights")].losses[0] == pytest.approx(with_border.losses[0], rel=1e-5)
