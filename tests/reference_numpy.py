"""An independent U-Net reader, written from the canonical format alone.

It shares no code with ``impls``: it reads a checkpoint with safetensors and
json, takes the architecture from the keys and the spec in the metadata, and
runs the eval-mode forward in float64 numpy (NCHW), so a checkpoint written by
``impls.convert.save`` can be checked by something that never saw the models.
"""

from __future__ import annotations

import json

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from safetensors import safe_open

EPS = 1e-5


def read(path: str) -> tuple[dict[str, np.ndarray], dict]:
    with safe_open(path, framework="np") as f:
        spec = json.loads(f.metadata()["unet_spec"])
        weights = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    return weights, spec


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))  # n, c, h, w, kh, kw
    y = np.einsum("nchwij,ocij->nohw", windows, w)
    return y if b is None else y + b[None, :, None, None]


def bilinear_matrix(n: int) -> np.ndarray:
    """(2n, n) interpolation with half-pixel centres, edges clamped."""
    m = np.zeros((2 * n, n))
    for o in range(2 * n):
        src = max((o + 0.5) / 2 - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1, frac = min(i0 + 1, n - 1), src - i0
        m[o, i0] += 1 - frac
        m[o, i1] += frac
    return m


def forward(weights: dict[str, np.ndarray], spec: dict, x: np.ndarray) -> np.ndarray:
    pad = 1 if spec["padding"] == "same" else 0
    depth = sum(1 for k in weights if k.startswith("down") and k.endswith(".conv1.weight")) - 1

    def double_conv(block: str, x: np.ndarray) -> np.ndarray:
        for j in (1, 2):
            x = conv(x, weights[f"{block}.conv{j}.weight"], weights.get(f"{block}.conv{j}.bias"), pad)
            if f"{block}.norm{j}.weight" in weights:
                mean = weights[f"{block}.norm{j}.running_mean"][None, :, None, None]
                var = weights[f"{block}.norm{j}.running_var"][None, :, None, None]
                scale = weights[f"{block}.norm{j}.weight"][None, :, None, None]
                x = (x - mean) / np.sqrt(var + EPS) * scale + weights[f"{block}.norm{j}.bias"][
                    None, :, None, None
                ]
            x = np.maximum(x, 0)
        return x

    skips = []
    for i in range(depth):
        x = double_conv(f"down{i}", x)
        skips.append(x)
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    x = double_conv(f"down{depth}", x)
    for i in reversed(range(depth)):
        w, b = weights[f"up{i}.upconv.weight"], weights[f"up{i}.upconv.bias"]
        if spec["upsample"] == "transpose":  # (in, out, 2, 2), stride 2: no overlap
            n, _, h, wd = x.shape
            x = np.einsum("ncij,coab->noiajb", x, w).reshape(n, w.shape[1], 2 * h, 2 * wd)
            x = x + b[None, :, None, None]
        else:
            x = np.einsum("oh,nchw,pw->ncop", bilinear_matrix(x.shape[2]), x, bilinear_matrix(x.shape[3]))
            x = conv(x, w, b, 0)
        skip = skips[i]
        top, left = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
        skip = skip[:, :, top : top + x.shape[2], left : left + x.shape[3]]
        x = double_conv(f"up{i}", np.concatenate([skip, x], axis=1))
    return conv(x, weights["head.weight"], weights["head.bias"], 0)
