"""Canonical weights: the one conversion layer between frameworks and files.

A canonical weight dict maps the names of ``UNetSpec.param_shapes()`` to numpy
arrays in PyTorch's layouts, so the PyTorch model's state_dict (less
``num_batches_tracked``) *is* the canonical dict. Flax differs in three ways,
each handled here and nowhere else:

- convs: PyTorch OIHW, Flax HWIO (3D: OIDHW and DHWIO);
- transposed convs: PyTorch (in, out, kh, kw); Flax's ``ConvTranspose`` with
  ``transpose_kernel=False`` wants (kh, kw, in, out) flipped on every spatial
  axis (it runs the equivalent dilated conv, which correlates, not convolves);
- BatchNorm: weight/bias/running_mean/running_var are scale/bias/mean/var
  (instance norm: weight/bias are scale/bias).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from impls.files import atomic_output, check_named_output
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
    if array.ndim == 1:
        return array
    taps = tuple(range(2, array.ndim))
    if _is_transposed_kernel(name, spec):
        return array.transpose(*taps, 0, 1)[(slice(None, None, -1),) * len(taps)]
    return array.transpose(*taps, 1, 0)


def _from_flax_layout(name: str, array: np.ndarray, spec: UNetSpec) -> np.ndarray:
    if array.ndim == 1:
        return array
    channels, taps = (array.ndim - 2, array.ndim - 1), tuple(range(array.ndim - 2))
    if _is_transposed_kernel(name, spec):
        return array[(slice(None, None, -1),) * len(taps)].transpose(*channels, *taps)
    return array.transpose(*reversed(channels), *taps)


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

CANONICAL_FILE = "a canonical unet-bench safetensors file (weights with their UNetSpec in the metadata)"
# safetensors' own cap on a header: a larger leading length means the file is no safetensors file.
_SAFETENSORS_HEADER_LIMIT = 100_000_000
_DAMAGED_FIX = "the file is incomplete or damaged (an interrupted write, copy or download?): make it again"
# What to do with each kind of file (see _sniff) that load refuses.
_LOAD_FIXES = {
    "torch": "if it is a milesial/Pytorch-UNet checkpoint, convert it first: "
    "python -m impls.convert from-milesial {path} OUT.safetensors",
    "damaged": _DAMAGED_FIX,
    "unknown": "write canonical files with impls.convert.save(file, weights, spec)",
}


class CheckpointError(ValueError):
    """A file or dict that is not the checkpoint asked for; the message names it, says what it
    holds, what was expected and how to get that."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No such file (still a FileNotFoundError, as before these messages)."""


def _refuse(source: object, found: str, expected: str, fix: str) -> CheckpointError:
    """Every refusal here has this one shape, so that none lacks a part."""
    return CheckpointError(f"{source}: found {found}; expected {expected}. Fix: {fix}")


def _gist(error: Exception) -> str:
    """A library's message cut to its first sentence, to fit in a one-line refusal (torch's run on)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line.split(". ")[0].rstrip(".")


def _input_file(file: str | Path, expected: str) -> Path:
    """``file`` as a Path, refused unless it is an existing file."""
    path = Path(file)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such file; expected {expected}")
    if path.is_dir():
        raise _refuse(path, "a folder", expected, "name the file inside it")
    return path


def _sniff(path: Path) -> tuple[str, str]:
    """(kind, description) of a file's format, read off its first bytes; nothing is unpickled.

    kind is "safetensors" (complete as far as its header tells), "torch" (as torch.save
    writes), "damaged" (empty, truncated or corrupt) or "unknown".
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if head.startswith(b"PK\x03\x04"):
            return "torch", "a PyTorch checkpoint (a zip file, as torch.save writes)"
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            return "torch", "a Python pickle (torch.save's legacy format)"
        if not head:
            return "damaged", "an empty file"
        length = int.from_bytes(head, "little")  # safetensors: the header's length, then the JSON header
        header = f.read(length) if len(head) == 8 and length <= _SAFETENSORS_HEADER_LIMIT else b""
    if not header.startswith(b"{"):
        return "unknown", f"a file in a format not read here (it starts with {head!r})"
    truncated = "a truncated safetensors file: its header says {} bytes, the file has " + str(size)
    if len(header) < length:
        return "damaged", truncated.format(f"at least {8 + length}")
    try:
        table = json.loads(header)
        data = max((int(v["data_offsets"][1]) for k, v in table.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "damaged", "a corrupt safetensors file (its header is no JSON table of tensors)"
    if 8 + length + data > size:
        return "damaged", truncated.format(8 + length + data)
    return "safetensors", "a safetensors file"


def save(
    file: str | Path, weights: Mapping[str, np.ndarray], spec: UNetSpec, *, inputs: Iterable[str | Path] = ()
) -> None:
    """Write canonical weights as safetensors, with the spec in the file's metadata.

    Whole or not at all, in a folder created if missing, and never over one of ``inputs``
    (the files the weights were read from).
    """
    check_weights(weights, spec.param_shapes(), f"{spec} (refusing to write {file})")
    arrays = {name: np.ascontiguousarray(weights[name]) for name in spec.param_shapes()}
    with atomic_output(file, *inputs) as temporary:
        safetensors.numpy.save_file(arrays, str(temporary), metadata={SPEC_METADATA_KEY: spec.to_json()})


def load(file: str | Path) -> tuple[dict[str, np.ndarray], UNetSpec]:
    """Read a file written by ``save``: (canonical weights, spec), checked against each other."""
    path = _input_file(file, CANONICAL_FILE)
    kind, found = _sniff(path)
    if kind != "safetensors":
        raise _refuse(path, found, CANONICAL_FILE, _LOAD_FIXES[kind].format(path=path))
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not iterable)
    except safetensors.SafetensorError as error:  # damage its header does not show
        found = f"a corrupt safetensors file ({_gist(error)})"
        raise _refuse(path, found, CANONICAL_FILE, _DAMAGED_FIX) from None
    if SPEC_METADATA_KEY not in metadata:
        found = f"a safetensors file with no {SPEC_METADATA_KEY!r} in its metadata (so no architecture)"
        raise _refuse(path, found, CANONICAL_FILE, _LOAD_FIXES["unknown"])
    try:
        spec = UNetSpec.from_json(metadata[SPEC_METADATA_KEY])
    except (ValueError, TypeError) as err:
        raise _refuse(
            path, f"an invalid spec in its metadata ({err})", CANONICAL_FILE, _LOAD_FIXES["unknown"]
        ) from err
    check_weights(weights, spec.param_shapes(), f"the spec stored in {path}, {spec}")
    return {name: weights[name] for name in spec.param_shapes()}, spec


# -- foreign checkpoints: milesial/Pytorch-UNet -------------------------------------

MILESIAL_STATE = "a milesial/Pytorch-UNet UNet(bilinear=False) state_dict (a .pth as its train.py writes)"
# What to do with each kind of file (see _sniff) that is no PyTorch checkpoint.
_MILESIAL_FIXES = {
    "safetensors": "if impls.convert wrote it, it is converted already: read it with impls.convert.load; "
    "else read it with safetensors.torch.load_file and pass the dict to impls.convert.from_milesial",
    "damaged": _DAMAGED_FIX,
    "unknown": "give the .pth file that milesial/Pytorch-UNet's train.py saves, "
    "or one written with torch.save(model.state_dict(), 'weights.pth')",
}
# Where training scripts commonly put the state_dict inside a checkpoint dict.
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model", "net")
_MILESIAL_FIRST = "inc.double_conv.0.weight"

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


def _save_instead(path: Path | None, expression: str) -> str:
    """How to hand over ``expression`` in place of what was given: as a file, or the value itself."""
    if path is None:
        return f"pass {expression} instead"
    return f"torch.save({expression}, 'weights.pth'), then convert weights.pth"


def _preview(keys: Iterable[object], count: int = 4) -> str:
    names = [str(k) for k in keys]
    return ", ".join(names[:count]) + (f", ... ({len(names)} in all)" if len(names) > count else "")


def _unsafe_pickle(path: Path, error: Exception) -> CheckpointError:
    """Why a weights-only load refused ``path``, told from the class names in its pickle (read, not run)."""
    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError):  # the legacy format, or damaged: no names to read
        unsafe = []
    classes = sorted(unsafe, key=lambda name: (name.startswith("torch"), name))  # the file's own first
    save_state = _save_instead(path, "model.state_dict()")
    if any(name.startswith("torch.nn.modules.") for name in classes):
        found = (
            f"a whole model saved with torch.save(model) (pickled classes: {_preview(classes)}), which only "
            "a load that runs code from the file (weights_only=False, unsafe) can read"
        )
        trusted = _save_instead(path, f"torch.load('{path}', weights_only=False).state_dict()")
        fix = f"where the model is defined, {save_state}; or, only if you trust the file, {trusted}"
        return _refuse(path, found, MILESIAL_STATE, fix)
    if classes:
        found = f"pickled classes that a safe (weights_only) load refuses: {_preview(classes)}"
    else:
        reason = re.search(r"WeightsUnpickler error: (.*)", str(error))  # torch's line that says why
        detail = reason[1] if reason else _gist(error)
        found = f"a pickle that a safe (weights_only) load refuses ({detail})"
    return _refuse(path, found, MILESIAL_STATE, save_state)


def _read_milesial(file: str | Path) -> tuple[Path, object]:
    """A .pth file's path and content, loaded with weights_only: nothing in it is run."""
    import pickle

    import torch

    path = _input_file(file, MILESIAL_STATE)
    kind, found = _sniff(path)
    if kind != "torch":
        raise _refuse(path, found, MILESIAL_STATE, _MILESIAL_FIXES[kind])
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unsafe_pickle(path, error) from None
    except (RuntimeError, EOFError) as error:  # torch's words for a cut or corrupt zip or pickle
        found = f"an unreadable PyTorch checkpoint ({_gist(error)})"
        raise _refuse(path, found, MILESIAL_STATE, _DAMAGED_FIX) from None


def _foreign_fix(keys: Iterable[object]) -> str:
    """What to do with a state_dict in another layout: two common ones have a remedy."""
    names = [str(k) for k in keys]
    if "down0.conv1.weight" in names:
        return "these are unet-bench's own names: load them with impls.convert.to_torch or impls.convert.save"
    if names and all(name.startswith("module.") for name in names):
        return "strip the 'module.' that nn.DataParallel puts before every key, then convert"
    return "only milesial/Pytorch-UNet's UNet is imported; another U-Net needs its own mapping to UNetSpec"


def _milesial_state(value: object, path: Path | None, source: object) -> dict[str, torch.Tensor]:
    """The tensors of a milesial state_dict less its mask_values and BatchNorm counters, after
    refusing anything else with what it is and how to get the state_dict out of it."""
    import torch

    if not isinstance(value, Mapping):
        items = f" of {len(value)} items" if isinstance(value, (list, tuple)) else ""
        found = f"a {type(value).__name__}{items}, not a dict of tensors"
        raise _refuse(source, found, MILESIAL_STATE, _save_instead(path, "model.state_dict()"))
    if _MILESIAL_FIRST not in value:  # a training checkpoint holding the state_dict under some key?
        nested = [k for k, v in value.items() if isinstance(v, Mapping) and _MILESIAL_FIRST in v]
        known = [k for k in _WRAPPER_KEYS if isinstance(value.get(k), Mapping)]
        if nested or known:
            key = (nested or known)[0]
            found = f"a checkpoint dict (keys: {_preview(value)}) holding the state_dict under {key!r}"
            loaded = f"torch.load('{path}')" if path else "checkpoint"
            raise _refuse(source, found, MILESIAL_STATE, _save_instead(path, f"{loaded}[{key!r}]"))
    state = {
        k: v for k, v in value.items() if k != "mask_values" and not str(k).endswith("num_batches_tracked")
    }
    if _MILESIAL_FIRST not in state or "outc.conv.weight" not in state:
        found = (
            f"a dict that is not a milesial/Pytorch-UNet state_dict (no {_MILESIAL_FIRST} or "
            f"outc.conv.weight; its keys: {_preview(state)})"
        )
        raise _refuse(source, found, MILESIAL_STATE, _foreign_fix(state))
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        found = f"entries that are not tensors: {_preview(not_tensors)}"
        raise _refuse(source, found, MILESIAL_STATE, _save_instead(path, "model.state_dict()"))
    return state


def from_milesial(state_dict_or_path: Mapping[str, torch.Tensor] | str | Path) -> tuple[dict, UNetSpec]:
    """Import a milesial/Pytorch-UNet ``UNet(n_channels, n_classes, bilinear=False)`` state_dict.

    Accepts the dict or a ``.pth`` file (with or without its ``mask_values``
    entry). Returns canonical weights and the spec that computes exactly what
    the original computes, at every input size it accepts (``pad_to_skip``).
    Anything else raises CheckpointError saying what it is and what to do.
    """
    if isinstance(state_dict_or_path, (str, Path)):
        path, value = _read_milesial(state_dict_or_path)
    else:
        path, value = None, state_dict_or_path
    source = path or "the state_dict given"
    state = _milesial_state(value, path, source)
    depth = sum(1 for k in state if re.fullmatch(r"down\d+\.maxpool_conv\.1\.double_conv\.0\.weight", str(k)))
    if "up1.up.weight" not in state:
        raise CheckpointError(
            f"{source}: this is a milesial UNet(bilinear=True) checkpoint, which UNetSpec cannot express "
            "exactly: it upsamples by bilinear interpolation with align_corners=True and no learned "
            "up-convolution, and halves the channels of its bottleneck and decoder (DoubleConvs with "
            "mid-channels), while UNetSpec's bilinear up-conv uses half-pixel centres followed by a learned "
            "1x1 conv; refusing rather than approximating"
        )
    names = {key: _milesial_name(str(key), depth) for key in state}
    unknown = sorted(str(key) for key, name in names.items() if name is None)
    if unknown:
        found = f"milesial keys that map to no canonical weight: {', '.join(unknown)}"
        fix = "only the unmodified UNet is imported; drop those keys only if the model does not use them"
        raise _refuse(source, found, MILESIAL_STATE, fix)
    first = state[_MILESIAL_FIRST]
    spec = UNetSpec(
        in_channels=first.shape[1],
        num_classes=state["outc.conv.weight"].shape[0],
        width=first.shape[0],
        depth=depth,
        conv_bias="inc.double_conv.0.bias" in state,
        pad_to_skip=True,
    )
    weights = {names[key]: _to_numpy(tensor) for key, tensor in state.items()}
    check_weights(weights, spec.param_shapes(), f"the spec read off the milesial checkpoint {source}, {spec}")
    return {name: weights[name] for name in spec.param_shapes()}, spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impls.convert", description="Convert U-Net checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    milesial = commands.add_parser(
        "from-milesial", help="a milesial/Pytorch-UNet .pth state_dict to a canonical .safetensors file"
    )
    milesial.add_argument("source", type=Path, help="IN.pth")
    milesial.add_argument("target", type=Path, help="OUT.safetensors (never IN.pth itself)")
    milesial.add_argument("--force", action="store_true", help="replace OUT.safetensors if it exists")
    args = parser.parse_args(argv)
    try:
        check_named_output(args.target, args.source, suffix=".safetensors", force=args.force)
        weights, spec = from_milesial(args.source)
        save(args.target, weights, spec, inputs=[args.source])
    except (ValueError, OSError) as error:  # each says the file and the fix in one line: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.target}: {len(weights)} tensors, {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
