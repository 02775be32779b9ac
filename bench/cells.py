"""Synthetic microscopy-like images of touching cells, with their instance labels (and volumes of
touching blobs, for 3D U-Nets).

Real data cannot be downloaded here, so this seeded generator stands in: cells
are ellipses of varied size, shape, orientation and brightness, placed so that
many touch or overlap; each has a darker rim (its membrane), so that touching
cells show a faint dip between them, as in the paper's HeLa images. Uneven
illumination, blur and noise are added. Labels follow the paper: instances,
and a foreground target in which touching cells are parted by a background
line one pixel wide, which the border-weighted loss teaches the network to draw.

With ``dims=3`` the same recipe makes volumes: cells are ellipsoids of random
orientation, touching cells are parted by a surface one voxel thick, and the
illumination varies along all three axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class CellImages:
    images: np.ndarray  # (N, 1, H, W) float32, roughly zero mean and unit variance; (N, 1, D, H, W)
    instances: np.ndarray  # (N, H, W) int32: 0 background, 1..n cells, touching cells parted; (N, D, H, W)
    foreground: np.ndarray  # (N, H, W) int32: instances > 0; (N, D, H, W)


# Per dimensionality: how many cells in a reference square (cube) of this side, and their major
# radius, in pixels (voxels). Fixed before any training: the workload's difficulty.
REFERENCE_SIDE = {2: 96, 3: 48}
CELLS = {2: (14, 26), 3: (20, 32)}
RADIUS = {2: (5.0, 12.0), 3: (5.0, 10.0)}


def _ellipse(shape: tuple[int, int], rng: np.random.Generator, radius: tuple[float, float]):
    """A random ellipse within its bounding box: the box, its mask and normalised radius there.

    The radius is 0 at the centre and 1 on the edge. Only the box is computed,
    so that whole images of thousands of cells take seconds, not minutes.
    """
    h, w = shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    a = rng.uniform(*radius)
    b = a * rng.uniform(0.6, 1.0)
    theta = rng.uniform(0, np.pi)
    top, left = max(int(cy - a), 0), max(int(cx - a), 0)
    box = (slice(top, min(int(cy + a) + 2, h)), slice(left, min(int(cx + a) + 2, w)))
    y, x = np.mgrid[box]
    u = ((x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)) / a
    v = (-(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)) / b
    r = np.sqrt(u**2 + v**2)
    return box, r < 1, r


def _ellipsoid(shape: tuple[int, int, int], rng: np.random.Generator, radius: tuple[float, float]):
    """A random ellipsoid within its bounding box, as ``_ellipse`` in 3D: radii a, and b and c
    each 0.6-1 of a, in a random orientation."""
    centre = rng.uniform(0, shape)
    a = rng.uniform(*radius)
    radii = np.array([a, a * rng.uniform(0.6, 1.0), a * rng.uniform(0.6, 1.0)])
    rotation = Rotation.random(rng=rng).as_matrix()
    box = tuple(slice(max(int(c - a), 0), min(int(c + a) + 2, n)) for c, n in zip(centre, shape, strict=True))
    offsets = np.stack(np.mgrid[box], axis=-1) - centre
    r = np.linalg.norm((offsets @ rotation) / radii, axis=-1)
    return box, r < 1, r


def _part_touching(instances: np.ndarray) -> np.ndarray:
    """Set to background each cell pixel next to a cell of a higher label.

    That one-pixel line (one-voxel surface) leaves no two cells 8-connected (26-connected).
    """
    border = (instances > 0) & (ndimage.grey_dilation(instances, size=3) != instances)
    return np.where(border, 0, instances)


def generate(
    count: int,
    size: int,
    *,
    seed: int,
    dims: int = 2,
    cells: tuple[float, float] | None = None,
    radius: tuple[float, float] | None = None,
) -> CellImages:
    """``count`` images of ``size`` x ``size`` pixels (volumes of ``size``**3 voxels with
    ``dims=3``), reproducible from ``seed``.

    ``cells`` bounds the number of cells per REFERENCE_SIDE square (cube) (scaled
    with the area or volume, drawn uniformly); ``radius`` bounds their major
    radius in pixels. Both default to CELLS and RADIUS.
    """
    rng = np.random.default_rng(seed)
    cells, radius = cells or CELLS[dims], radius or RADIUS[dims]
    blob = _ellipse if dims == 2 else _ellipsoid
    shape = (size,) * dims
    scale = (size / REFERENCE_SIDE[dims]) ** dims
    images = np.empty((count, 1, *shape), np.float32)
    instances = np.empty((count, *shape), np.int32)
    for k in range(count):
        label = np.zeros(shape, np.int32)
        intensity = np.zeros(shape, np.float32)
        n = max(1, round(rng.uniform(*cells) * scale))
        for i in range(1, n + 1):
            box, mask, r = blob(shape, rng, radius)
            if rng.uniform() < 0.5:  # fills around earlier cells: they touch; else it overlaps them
                mask &= label[box] == 0
            brightness = rng.uniform(0.5, 1.0)
            profile = brightness * (1 - 0.6 * np.clip(r, 0, 1) ** 4)  # darker rim: the membrane
            label[box][mask] = i
            intensity[box][mask] = profile[mask]
        label = _part_touching(label)
        grid = np.mgrid[tuple(slice(size) for _ in shape)] / size
        gradient = rng.uniform(-0.5, 0.5, dims)  # along the last axis first (x, then y, then z)
        illumination = (
            1 + 0.4 * sum(g * (axis - 0.5) for g, axis in zip(gradient, grid[::-1], strict=True)) * 2
        )
        image = ndimage.gaussian_filter(intensity, 1.0) * illumination + 0.1
        image = image + rng.normal(0, 0.08, image.shape)
        images[k, 0] = (image - image.mean()) / (image.std() + 1e-6)
        instances[k] = label
    return CellImages(images, instances, (instances > 0).astype(np.int32))


# -- how well a predicted foreground segments the cells -------------------------------


def dice(predicted: np.ndarray, target: np.ndarray) -> float:
    """Foreground Dice, 2 |P and T| / (|P| + |T|), over all pixels given."""
    predicted, target = predicted.astype(bool), target.astype(bool)
    total = predicted.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * (predicted & target).sum() / total)


def touching_pairs(instances: np.ndarray, gap: int = 2) -> set[tuple[int, int]]:
    """Pairs of cells at most ``gap`` pixels (voxels) apart (the parting line is one pixel)."""
    pairs = set()
    near = np.ones((2 * gap + 1,) * instances.ndim, bool)
    for label, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        window = tuple(slice(max(s.start - gap, 0), s.stop + gap) for s in box)
        grown = ndimage.binary_dilation(instances[window] == label, near)
        pairs |= {(label, int(other)) for other in np.unique(instances[window][grown]) if other > label}
    return pairs


def separated_fraction(predicted: np.ndarray, instances: np.ndarray) -> tuple[int, int]:
    """(touching pairs that come out separated, touching pairs) for one image (or volume).

    The predicted foreground's connected components (8-connected; 26 in 3D) are
    matched to the true cells at IoU > 0.5; a pair is separated when both of its
    cells are matched, to different components.
    """
    components, _ = ndimage.label(predicted.astype(bool), structure=np.ones((3,) * predicted.ndim))
    match = {}
    for label in np.unique(instances[instances > 0]):
        cell = instances == label
        hits, counts = np.unique(components[cell & (components > 0)], return_counts=True)
        if len(hits):
            best = hits[counts.argmax()]
            iou = counts.max() / np.count_nonzero(cell | (components == best))
            if iou > 0.5:
                match[int(label)] = int(best)
    pairs = touching_pairs(instances)
    separated = sum(1 for a, b in pairs if a in match and b in match and match[a] != match[b])
    return separated, len(pairs)
