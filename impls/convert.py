"""Canonical weights: the one conversion layer between frameworks and files.

A canonical weight dict maps the names of ``UNetSpec.param_shapes()`` to numpy
arrays in PyTorch's layouts, so the PyTorch model's state_dict (less
``num_batches_tracked``) *is* the canonical dict. Flax differs in three ways,
each handled here and nowhere else:

- convs: PyTorch OIHW, Flax HWIO;
- transposed convs: PyTorch (in, out, kh, kw); Flax's ``ConvTranspose`` with
  ``transpose_kernel=False`` wants (kh, kw, in, out) flipped on both spatial
  axes (it runs the equivalent dilated conv, which correlates, not convolves);
- BatchNorm: weight/bias/running_mean/running_var are scale/bias/mean/var.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.torch
import torch
from flax import nnx

from impls.spec import UNetSpec

SPEC_METADATA_KEY = "unet_spec"

_NORM_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_CONV_LEAVES = {"weight": "kernel", "bias": "bias"}


class WeightsMismatchError(ValueError):
    """Weights that do not fit a model: every missing, unexpected and wrong-shaped key."""


def check_weights(
    weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """Raise one WeightsMismatchError listing every key that does not fit ``expected``."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [
        f"{k} {tuple(weights[k].shape)} (expected {tuple(shape)})"
        for k, shape in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(shape)
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise WeightsMismatchError(
            f"weights do not fit {where}: "
            + "; ".join(problems)
            + ". Were they made for another UNetSpec? UNetSpec.param_shapes() lists what fits."
        )


# -- numpy <-> torch, keeping bfloat16 (numpy knows it through ml_dtypes) --------


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


# -- torch ----------------------------------------------------------------------


def _torch_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def from_torch(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The canonical dict of a PyTorch U-Net (a copy, in the module's dtype)."""
    return {k: _to_numpy(v) for k, v in _torch_state(module).items()}


def to_torch(weights: Mapping[str, np.ndarray], module: torch.nn.Module) -> torch.nn.Module:
    """Load canonical weights into ``module`` in place, in the module's own dtype."""
    state = _torch_state(module)
    check_weights(weights, {k: tuple(v.shape) for k, v in state.items()}, "the PyTorch model")
    with torch.no_grad():
        for name, tensor in state.items():
            tensor.copy_(_to_tensor(weights[name]))
    return module


# -- flax -----------------------------------------------------------------------


def _flax_path(name: str) -> tuple[str, ...]:
    *modules, leaf = name.split(".")
    leaves = _NORM_LEAVES if modules[-1].startswith("norm") else _CONV_LEAVES
    return (*modules, leaves[leaf])


def _is_transposed_kernel(name: str, spec: UNetSpec) -> bool:
    return spec.upsample == "transpose" and name.endswith("upconv.weight")


def _to_flax_layout(name: str, array: np.ndarray, spec: UNetSpec) -> np.ndarray:
    if array.ndim != 4:
        return array
    if _is_transposed_kernel(name, spec):
        return array.transpose(2, 3, 0, 1)[::-1, ::-1]
    return array.transpose(2, 3, 1, 0)


def _from_flax_layout(name: str, array: np.ndarray, spec: UNetSpec) -> np.ndarray:
    if array.ndim != 4:
        return array
    if _is_transposed_kernel(name, spec):
        return array[::-1, ::-1].transpose(2, 3, 0, 1)
    return array.transpose(3, 2, 0, 1)


def from_flax_state(state: nnx.State, spec: UNetSpec) -> dict[str, np.ndarray]:
    """Canonical arrays of a Flax state, or of any part of one (gradients, say).

    Every path in ``state`` must be one of the spec's canonical weights.
    """
    names = {_flax_path(n): n for n in spec.param_shapes()}
    flat = [(tuple(map(str, path)), v) for path, v in nnx.to_flat_state(state)]
    unknown = [".".join(path) for path, _ in flat if path not in names]
    if unknown:
        raise WeightsMismatchError(f"Flax state has paths that are not canonical weights: {unknown}")
    return {
        names[path]: np.array(_from_flax_layout(names[path], np.asarray(v.get_value()), spec), order="C")
        for path, v in flat
    }


def from_flax(module: nnx.Module) -> dict[str, np.ndarray]:
    """The canonical dict of a Flax U-Net (a copy, in the module's dtype)."""
    spec: UNetSpec = module.spec
    weights = from_flax_state(nnx.state(module), spec)
    return {name: weights[name] for name in spec.param_shapes()}  # canonical order


def to_flax(weights: Mapping[str, np.ndarray], module: nnx.Module) -> nnx.Module:
    """Load canonical weights into ``module`` in place, in the module's own dtype.

    ``module`` may be ``flax_unet.abstract(spec)``, which has no values yet.
    """
    spec: UNetSpec = module.spec
    check_weights(weights, spec.param_shapes(), "the Flax model")
    flat = dict(nnx.to_flat_state(nnx.state(module)))
    updates = []
    for name, array in weights.items():
        path = _flax_path(name)
        variable = flat[path]
        value = jnp.asarray(_to_flax_layout(name, array, spec), dtype=variable.get_value().dtype)
        updates.append((path, variable.replace(value)))
    nnx.update(module, nnx.from_flat_state(updates))
    return module


# -- files ----------------------------------------------------------------------


def save(path: str | Path, weights: Mapping[str, np.ndarray], spec: UNetSpec) -> None:
    """Write canonical weights as safetensors, with the spec in the file's metadata."""
    check_weights(weights, spec.param_shapes(), f"{spec} (refusing to write {path})")
    tensors = {name: _to_tensor(weights[name]) for name in spec.param_shapes()}
    safetensors.torch.save_file(tensors, str(path), metadata={SPEC_METADATA_KEY: spec.to_json()})


def load(path: str | Path) -> tuple[dict[str, np.ndarray], UNetSpec]:
    """Read a file written by ``save``: (canonical weights, spec), checked against each other."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        weights = {name: _to_numpy(f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if SPEC_METADATA_KEY not in metadata:
        raise ValueError(
            f"{path}: no {SPEC_METADATA_KEY!r} in the safetensors metadata, so the architecture "
            "is unknown; write checkpoints with impls.convert.save(path, weights, spec)"
        )
    try:
        spec = UNetSpec.from_json(metadata[SPEC_METADATA_KEY])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: the spec in the file's metadata is invalid: {err}") from err
    check_weights(weights, spec.param_shapes(), f"the spec stored in {path}, {spec}")
    return {name: weights[name] for name in spec.param_shapes()}, spec
