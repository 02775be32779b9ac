"""Prediction of an image of any size in tiles, as the paper does it (its Fig. 2).

``predict`` maps a float32 numpy batch (N, C, h, w) to logits (N, K, h', w'),
channels first as in the canonical layout, so one function serves every
framework (``torch_unet.predictor``, ``flax_unet.predictor``).

- ``padding="valid"``: overlap-tile. The image is mirrored once, by the
  network's border b on the top and left and by b plus what the last tile needs
  on the bottom and right; tiles step by the largest multiple of 2**depth that
  fits in an output tile. Max-pooling makes the network shift-equivariant only
  in steps of 2**depth, so then every tile sees the pooling grid of one pass
  over the whole mirrored image, and the stitched result equals that pass.
- ``padding="same"``: overlapping tiles, blended with Gaussian weights (as
  sliding-window inference in nnU-Net and MLPerf's 3D U-Net) or constant ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from impls import checks
from impls.spec import UNetSpec

Predict = Callable[[np.ndarray], np.ndarray]
GAUSSIAN_SIGMA_SCALE = 1 / 8  # of the tile side, as in nnU-Net


def _pair(tile: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a tile given as one side or a pair; a float side would be truncated, and a
    third side dropped, so both are refused."""
    if np.ndim(tile) == 0:
        side = checks.whole("tile", tile)
        return side, side
    sides = tuple(tile)
    if len(sides) != 2:
        raise ValueError(f"tile={tile!r}: expected one side or a (height, width) pair")
    return checks.whole("tile[0]", sides[0]), checks.whole("tile[1]", sides[1])


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


def _steps(spec: UNetSpec, tile: tuple[int, int], overlap: float) -> tuple[tuple[int, int], list[int]]:
    """(output tile side, step) per axis. Steps are multiples of 2**depth."""
    out = spec.output_size(*tile)
    grid = 2**spec.depth
    if spec.padding == "valid":  # as far as the output tile reaches: 388 -> 384 at depth 4
        return out, [max(o // grid * grid, grid) for o in out]
    return out, [max(int(t * (1 - overlap)) // grid * grid, grid) for t in tile]


def tile_positions(
    shape: tuple[int, int], spec: UNetSpec, tile: int | tuple[int, int], overlap: float = 0.5
) -> list[tuple[int, int]]:
    """Top-left corners of the tiles ``predict_tiled`` cuts from an (H, W) image.

    In the mirrored image for ``"valid"`` (where they are also the corners of
    the output tiles), in the image mirrored up to one tile for ``"same"``.
    """
    tile = _pair(tile)
    out, steps = _steps(spec, tile, overlap)
    if spec.padding == "valid":
        rows, cols = (_starts(n, o, s) for n, o, s in zip(shape, out, steps, strict=True))
    else:  # the last tiles end flush with the (padded) image
        rows, cols = (
            sorted({min(start, max(n, t) - t) for start in _starts(max(n, t), t, s)})
            for n, t, s in zip(shape, tile, steps, strict=True)
        )
    return [(r, c) for r in rows for c in cols]


def predict_tiled(
    predict: Predict,
    image: np.ndarray,
    spec: UNetSpec,
    *,
    tile: int | tuple[int, int],
    batch: int = 4,
    overlap: float = 0.5,
    blend: str = "gaussian",
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """(K, H, W) logits for a (C, H, W) float32 image of any size.

    ``tile`` is the input tile side (int or (h, w)); a size the spec rejects is
    refused with the nearest valid sizes. ``overlap`` (a fraction of the tile,
    in [0, 1)) and ``blend`` ("gaussian" or "constant") apply to
    ``padding="same"``; the overlap-tile strategy of ``"valid"`` needs neither,
    but they are checked all the same. Tiles go to ``predict`` ``batch`` (>= 1)
    at a time, the last batch filled up with zero tiles, so that a compiled
    predictor sees one shape. An image with NaN or inf is refused: every tile
    that sees one would get NaN logits, silently; ``allow_nonfinite=True``
    predicts it anyway.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or 0 in image.shape:
        raise ValueError(f"image: expected a non-empty (C, H, W) array, got shape {image.shape}")
    tile = _pair(tile)
    # The bound on memory: batch <= 0 would send every tile in one call.
    batch = checks.whole("batch", batch)
    spec.check_input((batch, image.shape[0], *tile))
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={blend!r}: expected 'gaussian' or 'constant'")
    checks.real("overlap", overlap, "a fraction in [0, 1)", lambda x: 0 <= x < 1)
    if not allow_nonfinite:
        _refuse_nonfinite(image)
    _, height, width = image.shape
    out, _ = _steps(spec, tile, overlap)
    positions = tile_positions((height, width), spec, tile, overlap)
    if spec.padding == "valid":
        # Mirror by the border b, and on the bottom and right by b plus what the last tile reaches.
        border = (tile[0] - out[0]) // 2
        extra_h = positions[-1][0] + out[0] - height
        extra_w = positions[-1][1] + out[1] - width
        padded = np.pad(
            image, ((0, 0), (border, border + extra_h), (border, border + extra_w)), mode="reflect"
        )
        window = np.ones(out, np.float32)  # overlaps agree (same pooling grid): any weights do
    else:
        padded = np.pad(
            image, ((0, 0), (0, max(tile[0] - height, 0)), (0, max(tile[1] - width, 0))), mode="reflect"
        )
        window = _window(tile, blend)
    full = (padded.shape[1] - tile[0] + out[0], padded.shape[2] - tile[1] + out[1])
    total = np.zeros((spec.num_classes, *full), np.float32)
    weight = np.zeros(full, np.float32)
    tiles = (padded[:, r : r + tile[0], c : c + tile[1]] for r, c in positions)
    outputs = _batched(predict, tiles, batch, (spec.num_classes, *out))
    for (r, c), logits in zip(positions, outputs, strict=True):
        total[:, r : r + out[0], c : c + out[1]] += logits * window
        weight[r : r + out[0], c : c + out[1]] += window
    return (total / weight)[:, :height, :width]


def _refuse_nonfinite(image: np.ndarray) -> None:
    """A ValueError saying how many values of ``image`` are NaN or inf, and where the first is."""
    finite = np.isfinite(image)
    if finite.all():
        return
    first = tuple(int(i) for i in np.unravel_index(np.argmin(finite), finite.shape))
    raise ValueError(
        f"image: {finite.size - int(finite.sum())} non-finite values (NaN or inf) of {finite.size}, the "
        f"first at (channel, row, column) {first}; every tile that sees one would give NaN logits: clean "
        "the image, or pass allow_nonfinite=True"
    )


def _window(tile: tuple[int, int], blend: str) -> np.ndarray:
    if blend == "constant":
        return np.ones(tile, np.float32)
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n * GAUSSIAN_SIGMA_SCALE)) ** 2) for n in tile]
    return np.outer(*axes).astype(np.float32)
