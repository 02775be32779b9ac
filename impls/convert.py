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

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from impls.spec import UNetSpec

if TYPE_CHECKING:  # each framework is imported where it is used: a jax process never loads torch
    import torch
    from flax import nnx

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
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    import torch

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
    import torch

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
    from flax import nnx

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
    from flax import nnx

    spec: UNetSpec = module.spec
    weights = from_flax_state(nnx.state(module), spec)
    return {name: weights[name] for name in spec.param_shapes()}  # canonical order


def to_flax(weights: Mapping[str, np.ndarray], module: nnx.Module) -> nnx.Module:
    """Load canonical weights into ``module`` in place, in the module's own dtype.

    ``module`` may be ``flax_unet.abstract(spec)``, which has no values yet.
    """
    import jax.numpy as jnp
    from flax import nnx

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


def save(file: str | Path, weights: Mapping[str, np.ndarray], spec: UNetSpec) -> None:
    """Write canonical weights as safetensors, with the spec in the file's metadata."""
    check_weights(weights, spec.param_shapes(), f"{spec} (refusing to write {file})")
    arrays = {name: np.ascontiguousarray(weights[name]) for name in spec.param_shapes()}
    safetensors.numpy.save_file(arrays, str(file), metadata={SPEC_METADATA_KEY: spec.to_json()})


def load(file: str | Path) -> tuple[dict[str, np.ndarray], UNetSpec]:
    """Read a file written by ``save``: (canonical weights, spec), checked against each other."""
    with safetensors.safe_open(str(file), framework="numpy") as f:
        metadata = f.metadata() or {}
        weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if SPEC_METADATA_KEY not in metadata:
        raise ValueError(
            f"{file}: no {SPEC_METADATA_KEY!r} in the safetensors metadata, so the architecture "
            "is unknown; write checkpoints with impls.convert.save(file, weights, spec)"
        )
    try:
        spec = UNetSpec.from_json(metadata[SPEC_METADATA_KEY])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{file}: the spec in the file's metadata is invalid: {err}") from err
    check_weights(weights, spec.param_shapes(), f"the spec stored in {file}, {spec}")
    return {name: weights[name] for name in spec.param_shapes()}, spec


# -- foreign checkpoints: milesial/Pytorch-UNet -------------------------------------

# Its DoubleConv is Sequential(conv, BatchNorm, ReLU, conv, BatchNorm, ReLU).
_MILESIAL_LAYERS = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_MILESIAL_BLOCK = re.compile(
    r"^(?:(?P<inc>inc)|down(?P<down>\d+)\.maxpool_conv\.1|up(?P<up>\d+)\.conv)"
    r"\.double_conv\.(?P<layer>\d+)\.(?P<leaf>weight|bias|running_mean|running_var)$"
)
_MILESIAL_OTHER = re.compile(r"^(?:up(?P<up>\d+)\.up|outc\.conv)\.(?P<leaf>weight|bias)$")


def _milesial_name(key: str, depth: int) -> str | None:
    """The canonical name of a milesial key, or None if it has none."""
    if match := _MILESIAL_BLOCK.match(key):
        layer = _MILESIAL_LAYERS.get(match["layer"])
        if layer is None:
            return None
        if match["inc"]:
            block = "down0"
        elif match["down"]:
            block = f"down{match['down']}"
        else:
            block = f"up{depth - int(match['up'])}"  # its up1 is the deepest
        return f"{block}.{layer}.{match['leaf']}"
    if match := _MILESIAL_OTHER.match(key):
        return (
            f"up{depth - int(match['up'])}.upconv.{match['leaf']}" if match["up"] else f"head.{match['leaf']}"
        )
    return None


def from_milesial(state_dict_or_path: Mapping[str, torch.Tensor] | str | Path) -> tuple[dict, UNetSpec]:
    """Import a milesial/Pytorch-UNet ``UNet(n_channels, n_classes, bilinear=False)`` state_dict.

    Accepts the dict or a ``.pth`` file (with or without its ``mask_values``
    entry). Returns canonical weights and the spec that computes exactly what
    the original computes, at every input size it accepts (``pad_to_skip``).
    """
    import torch

    if isinstance(state_dict_or_path, (str, Path)):
        state = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    else:
        state = dict(state_dict_or_path)
    state = {k: v for k, v in state.items() if k != "mask_values" and not k.endswith("num_batches_tracked")}
    if "inc.double_conv.0.weight" not in state or "outc.conv.weight" not in state:
        raise ValueError(
            "not a milesial/Pytorch-UNet state_dict: no inc.double_conv.0.weight or outc.conv.weight"
        )
    depth = sum(1 for k in state if re.fullmatch(r"down\d+\.maxpool_conv\.1\.double_conv\.0\.weight", k))
    if "up1.up.weight" not in state:
        raise ValueError(
            "this is a milesial UNet(bilinear=True) checkpoint, which UNetSpec cannot express exactly: it "
            "upsamples by bilinear interpolation with align_corners=True and no learned up-convolution, "
            "and halves the channels of its bottleneck and decoder (DoubleConvs with mid-channels), "
            "while UNetSpec's bilinear up-conv uses half-pixel centres followed by a learned 1x1 conv; "
            "refusing rather than approximating"
        )
    names = {key: _milesial_name(key, depth) for key in state}
    unknown = sorted(key for key, name in names.items() if name is None)
    if unknown:
        raise ValueError(f"milesial keys that map to no canonical weight: {', '.join(unknown)}")
    first = state["inc.double_conv.0.weight"]
    spec = UNetSpec(
        in_channels=first.shape[1],
        num_classes=state["outc.conv.weight"].shape[0],
        width=first.shape[0],
        depth=depth,
        conv_bias="inc.double_conv.0.bias" in state,
        pad_to_skip=True,
    )
    weights = {names[key]: _to_numpy(tensor) for key, tensor in state.items()}
    check_weights(weights, spec.param_shapes(), f"the spec read off the milesial checkpoint, {spec}")
    return {name: weights[name] for name in spec.param_shapes()}, spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impls.convert", description="Convert U-Net checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    milesial = commands.add_parser(
        "from-milesial", help="a milesial/Pytorch-UNet .pth state_dict to a canonical .safetensors file"
    )
    milesial.add_argument("source", type=Path, help="IN.pth")
    milesial.add_argument("target", type=Path, help="OUT.safetensors")
    args = parser.parse_args(argv)
    weights, spec = from_milesial(args.source)
    save(args.target, weights, spec)
    print(f"wrote {args.target}: {len(weights)} tensors, {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
