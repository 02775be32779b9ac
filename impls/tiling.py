"""Prediction of an image (or volume) of any size in tiles, as the paper does it (its Fig. 2).

``predict`` maps a float32 numpy batch (N, C, h, w) to logits (N, K, h', w'),
channels first as in the canonical layout, so one function serves every
framework (``torch_unet.predictor``, ``flax_unet.predictor``). With a 3D spec
the same holds for volumes, (N, C, d, h, w), with tiles cut on all three axes.

- ``padding="valid"``: overlap-tile. The image is mirrored once, by the
  network's border b on the top and left (and front) and by b plus what the
  last tile needs on the bottom and right (and back); tiles step by the largest
  multiple of 2**depth that fits in an output tile. Max-pooling makes the
  network shift-equivariant only in steps of 2**depth, so then every tile sees
  the pooling grid of one pass over the whole mirrored image, and the stitched
  result equals that pass.
- ``padding="same"``: overlapping tiles, blended with Gaussian weights (as
  sliding-window inference in nnU-Net, MONAI and MLPerf's 3D U-Net) or constant
  ones. The Gaussian is MONAI's ``compute_importance_map``: per axis
  exp(-x**2 / (2 sigma**2)) with x measured from the tile's centre (n - 1) / 2,
  sigma = n / 8, not truncated, the product over the axes, every weight raised
  to at least 1e-3 (so that no voxel is weighed ~0). nnU-Net's differs by
  half a voxel on even sides (its centre is n // 2, the peak of a filtered
  delta) and raises zeros to the smallest non-zero weight instead.
- ``mirror=True`` (either padding): test-time mirroring, as nnU-Net's; each
  batch of tiles is also predicted flipped on every non-empty set of spatial
  axes, flipped back, and the 2**dims results averaged.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator

import numpy as np

from impls import checks
from impls.spec import UNetSpec

Predict = Callable[[np.ndarray], np.ndarray]
GAUSSIAN_SIGMA_SCALE = 1 / 8  # of the tile side, as in nnU-Net, MONAI and MLPerf's 3D U-Net
GAUSSIAN_FLOOR = 1e-3  # MONAI's least weight
_AXES = {2: "(height, width) pair", 3: "(depth, height, width) triple"}
_IMAGE = {2: "(C, H, W)", 3: "(C, D, H, W)"}
_POSITION = {2: "(channel, row, column)", 3: "(channel, slice, row, column)"}


def _sides(tile: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    """A tile's sides, given as one side or one per axis; a float side would be truncated, and a
    missing or extra side misread, so both are refused."""
    if np.ndim(tile) == 0:
        return (checks.whole("tile", tile),) * dims
    sides = tuple(tile)
    if len(sides) != dims:
        raise ValueError(f"tile={tile!r}: expected one side or a {_AXES[dims]}")
    return tuple(checks.whole(f"tile[{i}]", side) for i, side in enumerate(sides))


def _starts(length: int, window: int, step: int) -> list[int]:
    """Window starts covering [0, length), stepping by ``step``; the last may overhang."""
    count = 1 if length <= window else -(-(length - window) // step) + 1
    return [i * step for i in range(count)]


def _batched(
    predict: Predict, tiles: Iterator[np.ndarray], batch: int, tile_out: tuple[int, ...]
) -> Iterator[np.ndarray]:
    """Run ``predict`` on full batches of tiles (the last one padded with zeros, so that
    compiled predictors see one shape), yielding one output tile at a time. Each call must
    return ``batch`` tiles of shape ``tile_out``: a smaller one (K=1, a 1x1 map) would broadcast
    into the stitched result without an error."""
    pending: list[np.ndarray] = []

    def flush() -> Iterator[np.ndarray]:
        stacked = np.stack(pending + [np.zeros_like(pending[0])] * (batch - len(pending)))
        out = np.asarray(predict(stacked))
        if out.shape != (batch, *tile_out):
            raise ValueError(
                f"predict returned shape {out.shape} for tiles of shape {stacked.shape}: expected "
                f"{(batch, *tile_out)}, (N, num_classes, h, w) as the spec gives"
            )
        yield from out[: len(pending)]
        pending.clear()

    for tile in tiles:
        pending.append(tile)
        if len(pending) == batch:
            yield from flush()
    if pending:
        yield from flush()


def _mirrored(predict: Predict, dims: int) -> Predict:
    """``predict`` averaged over the batch flipped on every set of spatial axes (the empty one
    included), each result flipped back."""
    flips = [axes for count in range(dims + 1) for axes in itertools.combinations(range(2, 2 + dims), count)]

    def averaged(batch: np.ndarray) -> np.ndarray:
        total = sum(
            np.flip(np.asarray(predict(np.ascontiguousarray(np.flip(batch, axes)))), axes) for axes in flips
        )
        return total / len(flips)

    return averaged


def _steps(spec: UNetSpec, tile: tuple[int, ...], overlap: float) -> tuple[tuple[int, ...], list[int]]:
    """(output tile side, step) per axis. Steps are multiples of 2**depth."""
    out = spec.output_size(*tile)
    grid = 2**spec.depth
    if spec.padding == "valid":  # as far as the output tile reaches: 388 -> 384 at depth 4
        return out, [max(o // grid * grid, grid) for o in out]
    return out, [max(int(t * (1 - overlap)) // grid * grid, grid) for t in tile]


def tile_positions(
    shape: tuple[int, ...], spec: UNetSpec, tile: int | tuple[int, ...], overlap: float = 0.5
) -> list[tuple[int, ...]]:
    """First corners (top-left, and front in 3D) of the tiles ``predict_tiled`` cuts from an image of
    spatial ``shape``, (H, W) or (D, H, W).

    In the mirrored image for ``"valid"`` (where they are also the corners of
    the output tiles), in the image mirrored up to one tile for ``"same"``.
    """
    tile = _sides(tile, spec.dims)
    out, steps = _steps(spec, tile, overlap)
    if spec.padding == "valid":
        starts = [_starts(n, o, s) for n, o, s in zip(shape, out, steps, strict=True)]
    else:  # the last tiles end flush with the (padded) image
        starts = [
            sorted({min(start, max(n, t) - t) for start in _starts(max(n, t), t, s)})
            for n, t, s in zip(shape, tile, steps, strict=True)
        ]
    return list(itertools.product(*starts))


def predict_tiled(
    predict: Predict,
    image: np.ndarray,
    spec: UNetSpec,
    *,
    tile: int | tuple[int, ...],
    batch: int = 4,
    overlap: float = 0.5,
    blend: str = "gaussian",
    mirror: bool = False,
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """(K, H, W) logits for a (C, H, W) float32 image of any size; (K, D, H, W) for a (C, D, H, W)
    volume with a 3D spec.

    ``tile`` is the input tile side (int, or one per axis); a size the spec
    rejects is refused with the nearest valid sizes. ``overlap`` (a fraction of
    the tile, in [0, 1)) and ``blend`` ("gaussian" or "constant") apply to
    ``padding="same"``; the overlap-tile strategy of ``"valid"`` needs neither,
    but they are checked all the same. ``mirror`` averages each tile's
    prediction over its flips on every set of spatial axes. Tiles go to
    ``predict`` ``batch`` (>= 1) at a time, the last batch filled up with zero
    tiles, so that a compiled predictor sees one shape. An image with NaN or inf
    is refused: every tile that sees one would get NaN logits, silently;
    ``allow_nonfinite=True`` predicts it anyway.
    """
    image = np.asarray(image, np.float32)
    dims = spec.dims
    if image.ndim != dims + 1 or 0 in image.shape:
        raise ValueError(f"image: expected a non-empty {_IMAGE[dims]} array, got shape {image.shape}")
    tile = _sides(tile, dims)
    # The bound on memory: batch <= 0 would send every tile in one call.
    batch = checks.whole("batch", batch)
    spec.check_input((batch, image.shape[0], *tile))
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={blend!r}: expected 'gaussian' or 'constant'")
    checks.real("overlap", overlap, "a fraction in [0, 1)", lambda x: 0 <= x < 1)
    if not isinstance(mirror, bool):
        raise ValueError(f"mirror={mirror!r}: expected True or False")
    if not allow_nonfinite:
        _refuse_nonfinite(image)
    sides = image.shape[1:]
    out, _ = _steps(spec, tile, overlap)
    positions = tile_positions(sides, spec, tile, overlap)
    if spec.padding == "valid":
        # Mirror by the border b, and after the image by b plus what the last tile reaches.
        borders = [(t - o) // 2 for t, o in zip(tile, out, strict=True)]
        pads = [
            (b, b + last + o - n) for b, last, o, n in zip(borders, positions[-1], out, sides, strict=True)
        ]
        window = np.ones(out, np.float32)  # overlaps agree (same pooling grid): any weights do
    else:
        pads = [(0, max(t - n, 0)) for t, n in zip(tile, sides, strict=True)]
        window = _window(tile, blend)
    padded = np.pad(image, ((0, 0), *pads), mode="reflect")
    full = tuple(p - t + o for p, t, o in zip(padded.shape[1:], tile, out, strict=True))
    total = np.zeros((spec.num_classes, *full), np.float32)
    weight = np.zeros(full, np.float32)

    def region(corner: tuple[int, ...], size: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(c, c + n) for c, n in zip(corner, size, strict=True))

    tiles = (padded[(slice(None), *region(corner, tile))] for corner in positions)
    predictor = _mirrored(predict, dims) if mirror else predict
    outputs = _batched(predictor, tiles, batch, (spec.num_classes, *out))
    for corner, logits in zip(positions, outputs, strict=True):
        total[(slice(None), *region(corner, out))] += logits * window
        weight[region(corner, out)] += window
    return (total / weight)[(slice(None), *(slice(0, n) for n in sides))]


def _refuse_nonfinite(image: np.ndarray) -> None:
    """A ValueError saying how many values of ``image`` are NaN or inf, and where the first is."""
    finite = np.isfinite(image)
    if finite.all():
        return
    first = tuple(int(i) for i in np.unravel_index(np.argmin(finite), finite.shape))
    raise ValueError(
        f"image: {finite.size - int(finite.sum())} non-finite values (NaN or inf) of {finite.size}, the "
        f"first at {_POSITION[image.ndim - 1]} {first}; every tile that sees one would give NaN logits: "
        "clean the image, or pass allow_nonfinite=True"
    )


def _window(tile: tuple[int, ...], blend: str) -> np.ndarray:
    """Each output voxel's weight in the blend (see the module's docstring for the Gaussian)."""
    if blend == "constant":
        return np.ones(tile, np.float32)
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n * GAUSSIAN_SIGMA_SCALE)) ** 2) for n in tile]
    return np.maximum(functools.reduce(np.multiply.outer, axes), GAUSSIAN_FLOOR).astype(np.float32)
