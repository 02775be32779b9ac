"""The paper's pixel-weighted loss: the weight map (numpy; each model file has its weighted cross-entropy).

For volumes (a 3D U-Net) the same formula holds with d1, d2 the Euclidean distances in 3D, in voxels.

Ronneberger et al. 2015, eq. (2): w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),
where w_c balances the classes and d1, d2 are the distances from background
pixel x to the nearest and the second-nearest cell. The border term is large
only in the thin background between touching cells, so the network is pushed
to predict that gap and keep the cells apart.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from impls import checks

# Beyond d1 + d2 = 6 sigma the border term is below exp(-18) < 1e-7 of w0.
_TRUNCATION_SIGMAS = 6.0


def class_balance(foreground: np.ndarray) -> np.ndarray:
    """w_c(x) = N / (2 N_class(x)): each class weighs half of the image, so w_c averages 1.

    An image with one class only gets w_c = 1 everywhere.
    """
    n = foreground.size
    n_fg = int(foreground.sum())
    if n_fg in (0, n):
        return np.ones(foreground.shape, np.float32)
    return np.where(foreground, n / (2 * n_fg), n / (2 * (n - n_fg))).astype(np.float32)


def _two_nearest(instances: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest cell, inf beyond ``margin``.

    Each cell's distance transform runs on its bounding box grown by ``margin``:
    farther away its distance exceeds the margin and cannot matter.
    """
    d1 = np.full(instances.shape, np.inf, np.float32)
    d2 = np.full(instances.shape, np.inf, np.float32)
    pad = math.ceil(margin)
    for label, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(axis.start - pad, 0), min(axis.stop + pad, n))
            for axis, n in zip(box, instances.shape, strict=True)
        )
        outside = instances[window] != label
        d = ndimage.distance_transform_edt(outside).astype(np.float32)
        d[d > margin] = np.inf
        w1, w2 = d1[window], d2[window]
        w2[...] = np.minimum(w2, np.maximum(w1, d))
        w1[...] = np.minimum(w1, d)
    return d1, d2


def weight_map(
    instances: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0, ignore_label: int | None = None
) -> np.ndarray:
    """The paper's weight map for an (H, W) integer instance image (0 background, 1..n cells), or a
    (D, H, W) volume of them (distances in voxels, in 3D).

    ``w0`` (>= 0; 0 leaves the class balance alone) and ``sigma`` (> 0, in
    pixels) are the paper's border weight and width. Negative labels are
    refused rather than read as background: they are a common "ignore" value.
    Pixels labelled ``ignore_label`` (any integer but 0: -1, or 255 in uint8
    images) get weight 0 and are neither background nor a cell: the class
    balance is computed over the other pixels, and distances to the cells pass
    through them as through background. Everywhere else the map is that of the
    same labels with those pixels set to 0, but for that class balance.

    Vectorised: one windowed Euclidean distance transform per cell (scipy),
    never a loop over pixels. Truncated at d1 + d2 = 6 sigma, where the border
    term has fallen below 1e-7 w0.
    """
    instances, ignored = _labels(instances, ignore_label)
    w0 = checks.real("w0", w0, "a finite weight >= 0 (0: the class balance alone)", lambda x: x >= 0)
    sigma = checks.real("sigma", sigma, "a finite number of pixels > 0", lambda x: x > 0)
    foreground = instances > 0
    if ignored is None:
        weights = class_balance(foreground)
    else:  # balanced over the pixels that count
        weights = np.zeros(instances.shape, np.float32)
        weights[~ignored] = class_balance(foreground[~ignored])
    d1, d2 = _two_nearest(instances, _TRUNCATION_SIGMAS * sigma)
    border = w0 * np.exp(-np.square(d1 + d2) / (2 * sigma**2))  # exp(-inf) = 0 where < 2 cells are near
    weights = weights + np.where(foreground, 0.0, border)
    if ignored is not None:
        weights[ignored] = 0.0
    return weights.astype(np.float32)


def _labels(instances: np.ndarray, ignore_label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(the labels with ``ignore_label``'s pixels set to 0, those pixels or None), after refusing all
    but an (H, W) or (D, H, W) integer image whose only negative label is ``ignore_label``."""
    instances = np.asarray(instances)
    if instances.ndim not in (2, 3):
        raise ValueError(
            f"instances: expected an (H, W) image or a (D, H, W) volume, got shape {instances.shape}"
        )
    if not np.issubdtype(instances.dtype, np.integer):
        hint = "; a mask is not instances: label its cells first, e.g. scipy.ndimage.label"
        raise ValueError(
            f"instances: expected an integer image (0 background, 1..n cells), got {instances.dtype}"
            + (hint if instances.dtype == bool else "")
        )
    ignored = None
    if ignore_label is not None:
        if checks.whole("ignore_label", ignore_label, least=None) == 0:
            raise ValueError("ignore_label=0: 0 is background; expected the label to ignore, e.g. -1 or 255")
        ignored = instances == ignore_label
    negative = instances < 0 if ignored is None else (instances < 0) & ~ignored
    if negative.any():
        values = np.unique(instances[negative])
        shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
        allowed = "pass ignore_label=<value> to give pixels of one value weight 0"
        if ignore_label is not None:
            allowed = f"besides those, only ignore_label={ignore_label}"
        raise ValueError(
            f"instances: negative labels ({shown}) on {int(negative.sum())} pixels, which would be weighted "
            f"as background; labels are 0 (background) and 1..n (cells): {allowed}"
        )
    if ignored is None:
        return instances, None
    return np.where(ignored, 0, instances), ignored
