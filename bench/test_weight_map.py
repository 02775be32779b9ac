"""The paper's weight map at a realistic size: 1024 x 1024 pixels, 200 cells, well under a second."""

from __future__ import annotations

import numpy as np

from bench import cells
from impls.losses import weight_map

SIZE, CELLS = 1024, 200


def _instances() -> np.ndarray:
    # bench.cells scales its cell count with the area: ask for 200 cells at 1024 px.
    per_96 = CELLS * (96 / SIZE) ** 2
    return cells.generate(1, SIZE, seed=0, cells=(per_96, per_96)).instances[0]


def test_weight_map_1024px_200_cells(benchmark) -> None:
    instances = _instances()
    benchmark.group = "weight map"
    benchmark.pedantic(weight_map, args=(instances,), rounds=5, iterations=1)
    cell_count = len(np.unique(instances)) - 1
    benchmark.extra_info.update(size=SIZE, cells=cell_count)
    assert 150 <= cell_count <= 200  # a few vanish under later ones
    if benchmark.stats is not None:
        assert benchmark.stats.stats.median < 0.5, "a 1024 x 1024 map should take well under a second"
