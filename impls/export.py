"""A canonical checkpoint exported to ONNX, AOTInductor or jax.export, verified at export time.

``python -m impls.export CHECKPOINT.safetensors --to onnx|aoti|jax OUT [--batch N] [--size H W]
[--dynamic] [--via torch|flax]`` (``--size D H W`` for a 3D checkpoint, whose files take NCDHW or
NDHWC volumes), and the same as functions (``to_onnx``, ``to_aoti``, ``to_jax``,
or ``export(..., to=...)``):

- ``onnx``: the PyTorch model through ``torch.onnx.export(..., dynamo=True)``, opset 18; with
  ``via="flax"`` the Flax model through jax2onnx instead, an independent route to a file that
  computes the same (NCHW in and out as well). Runs in onnxruntime, OpenVINO, TensorRT, ...
- ``aoti``: ``torch.export`` and AOTInductor, a ``.pt2`` package that
  ``torch._inductor.aoti_load_package`` loads without this project's code.
- ``jax``: ``jax.export`` of the Flax model, serialized StableHLO (NHWC, the Flax model's layout)
  that ``jax.export.deserialize`` reloads without this project's code, for CPU and CUDA.

Every file is written to a temporary name, run there in its own runtime on a seeded input
and compared with the model it came from (err, as in the tests, within ``TOLERANCE``); only a
file that agrees is renamed to OUT. With ``dynamic`` the batch and spatial sizes are symbolic,
declared as the spec's valid sizes (``r + 2**depth * k``), and the file is checked at a second
batch and size as well. Each route imports only its own framework, when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from impls import convert, footprint
from impls.checks import err, whole
from impls.files import atomic_output, check_named_output
from impls.spec import LAYOUTS, SPATIAL_AXES, UNetSpec

if TYPE_CHECKING:
    import jax

ROUTES = ("onnx", "aoti", "jax")
SUFFIXES = {"onnx": ".onnx", "aoti": ".pt2", "jax": ".stablehlo"}  # each route's file, as named
VIAS = ("torch", "flax")
OPSET = 18
# fp32 forward, as the parity tests bound eval-mode forwards between frameworks
TOLERANCE = 1e-5
# The input side used when none is given: the valid side nearest to this (a volume's, in 3D)
DEFAULT_SIDE = 256
DEFAULT_SIDE_3D = 64
SEED = 0
# Each spatial axis's symbol in a dynamic export's shapes.
_SYMBOLS = {"depth": "d", "height": "h", "width": "w"}


class ExportError(ValueError):
    """An export that could not be made, or that does not compute what its source model computes."""


@dataclass(frozen=True)
class Export:
    """What was written and how it was checked."""

    path: Path
    route: str  # which route made it: "onnx (torch.onnx, dynamo)", "aoti (...)", ...
    spec: UNetSpec
    layout: str  # "NCHW" or "NHWC" (3D: "NCDHW" or "NDHWC"), in and out
    input_shape: str  # as the file declares it: "(1, 1, 64, 64)" or "(batch, 1, 16*h, 16*w)"
    checks: tuple[tuple[tuple[int, ...], float], ...]  # (input shape, err) for each seeded input

    def summary(self) -> str:
        checked = ", ".join(f"{shape}: err {e:.1e}" for shape, e in self.checks)
        return (
            f"wrote {self.path}: {self.route}, {self.layout} float32 input {self.input_shape}; "
            f"checked against the source model on seeded inputs ({checked}; tolerance {TOLERANCE:g})"
        )


# -- sizes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sides:
    """The valid input sides of a spec as the export declares them: ``offset + period * k`` for
    k >= ``least`` (every side >= ``least`` when ``period`` is 1)."""

    offset: int
    period: int
    least: int

    def symbol(self, name: str) -> str:
        return f"{self.period}*{name}" + (f" + {self.offset}" if self.offset else "")


def _sides(spec: UNetSpec, *, torch_route: bool) -> _Sides:
    """The sides a dynamic export takes. torch.export makes no symbol of a size of 1, so its
    exports start where the bottleneck is 2 pixels, the second-smallest valid side."""
    smallest = spec.smallest_valid_size()
    if smallest is None:
        raise ExportError(f"{spec}: no input side below 65536 px is valid: nothing to export")
    if spec.pad_to_skip:
        return _Sides(0, 1, smallest)
    period = 2**spec.depth
    offset = smallest % period
    return _Sides(offset, period, (smallest - offset) // period + (1 if torch_route else 0))


def _default_side(spec: UNetSpec) -> int:
    wanted = DEFAULT_SIDE if spec.dims == 2 else DEFAULT_SIDE_3D
    try:
        spec.check_side(wanted)
        return wanted
    except ValueError:
        return min(spec.nearest_valid_sizes(wanted), key=lambda s: (abs(s - wanted), s))


def _input_size(spec: UNetSpec, size: int | tuple[int, ...] | None, checkpoint: Path) -> tuple[int, ...]:
    """The spatial sides, (h, w) or (d, h, w), from ``size`` (one side, alone or in a 1-tuple; one
    per axis; or None for the default), refused unless the spec takes them, with the nearest valid
    sides named."""
    axes = SPATIAL_AXES[-spec.dims :]
    if size is None:
        return (_default_side(spec),) * spec.dims
    sides = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    sides = sides * spec.dims if len(sides) == 1 else sides
    if len(sides) != spec.dims:
        raise ValueError(
            f"size {sides} for {checkpoint}: its {spec.dims}D U-Net takes one side or "
            f"{spec.dims} ({' '.join(axis[0].upper() for axis in axes)})"
        )
    for axis, side in zip(axes, sides, strict=True):
        whole(f"size {axis}", side)
    try:
        spec.output_size(*sides)
    except ValueError as error:
        raise ValueError(f"size {'x'.join(map(str, sides))} for {checkpoint}: {error}") from None
    return tuple(int(side) for side in sides)


def _second_size(spec: UNetSpec, sides: _Sides, size: tuple[int, ...]) -> tuple[int, ...]:
    """Another valid size, to check a dynamic export at: one period up on the first axis, two on
    the others."""
    step = 2**spec.depth if spec.pad_to_skip else sides.period
    first, *rest = size
    return (first + step + (1 if spec.pad_to_skip else 0), *(side + 2 * step for side in rest))


def seeded_input(shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    """The seeded float32 input every export is checked on (bench's TensorRT builds too)."""
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)


def check_export(
    what: str, out: Path, shape: tuple[int, ...], got: np.ndarray, ref: np.ndarray
) -> tuple[tuple[int, ...], float]:
    """(shape, err), after refusing an exported model whose output differs from its source's."""
    got = np.asarray(got)
    if got.shape != ref.shape:
        raise ExportError(
            f"{out}: the exported {what} gives an output of shape {got.shape} for the input {shape}, "
            f"the source model {ref.shape}; nothing written"
        )
    e = err(got, ref)
    if not e <= TOLERANCE:
        raise ExportError(
            f"{out}: the exported {what} differs from the source model on a seeded input of shape "
            f"{shape}: err {e:.3g} > {TOLERANCE:g}; nothing written"
        )
    return shape, e


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise these loggers to ERROR for the block: exporters log progress and missing optional
    packages (torchvision's ops, dm_pix) as warnings, and torch.export warns of its own pytree use."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
            )
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


@dataclass(frozen=True)
class _Job:
    """One export's checked arguments."""

    checkpoint: Path
    out: Path
    weights: dict[str, np.ndarray]
    spec: UNetSpec
    batch: int
    size: tuple[int, ...]
    dynamic: bool

    def layout(self, *, channels_last: bool = False) -> str:
        return LAYOUTS[self.spec.dims][channels_last]

    def inputs(self, sides: _Sides | None, *, channels_last: bool = False) -> list[tuple[int, ...]]:
        """The seeded inputs' shapes: the one given, and with ``dynamic`` a second batch and size."""
        shapes = [(self.batch, *self.size)]
        if self.dynamic and sides is not None:
            shapes.append((self.batch + 1, *_second_size(self.spec, sides, self.size)))
        c = self.spec.in_channels
        return [(n, *size, c) if channels_last else (n, c, *size) for n, *size in shapes]


def _job(
    checkpoint: str | Path,
    out: str | Path,
    *,
    batch: int,
    size: int | tuple[int, ...] | None,
    dynamic: bool,
    torch_route: bool,
    route: str,
    force: bool,
) -> _Job:
    """Everything checked before any framework is imported: the checkpoint, the sizes, the output
    (of the route's suffix, an existing file only with ``force``; its missing folder made only then)."""
    checkpoint = Path(checkpoint)
    batch = whole("batch", batch)
    if not isinstance(dynamic, bool):
        raise ValueError(f"dynamic={dynamic!r}: expected True or False")
    weights, spec = convert.load(checkpoint)
    size = _input_size(spec, size, checkpoint)
    shown = "x".join(map(str, size))
    if dynamic:
        sides = _sides(spec, torch_route=torch_route)
        least = sides.offset + sides.period * sides.least
        if min(size) < least:
            why = (
                " (torch.export takes no size of 1 as symbolic: the bottleneck must be at least 2 pixels)"
                if torch_route
                else ""
            )
            raise ValueError(
                f"size {shown} for {checkpoint}: a dynamic export of {spec} is made at a side of at "
                f"least {least}{why}; give --size {' '.join([str(least)] * spec.dims)} or larger"
            )
    out = check_named_output(out, checkpoint, suffix=SUFFIXES[route], force=force)
    job = _Job(checkpoint, out, weights, spec, batch, size, dynamic)
    shapes = job.inputs(_sides(spec, torch_route=torch_route) if dynamic else None)
    what = f"an export at batch {batch}, {shown}"
    needed = needed_bytes(spec, shapes, route, via="torch" if torch_route else "flax")
    problem = footprint.too_large(needed, footprint.available_bytes(), what)
    if problem:  # rather than started and killed, with whatever else the kernel picks
        raise ValueError(f"{problem}: give a smaller --batch or --size")
    return job


def needed_bytes(spec: UNetSpec, shapes: list[tuple[int, ...]], route: str, *, via: str = "torch") -> int:
    """An upper estimate of an export's peak memory (impls/footprint.py), checked at ``shapes``
    (channels first); jax2onnx's route (``via="flax"``), not measured apart, as the larger of its
    two parts."""
    kinds = [f"export-{route}", *(["export-jax"] if route == "onnx" and via == "flax" else [])]
    return max(
        footprint.estimate_bytes(spec, tuple(size), n, task="infer", kind=kind)
        for kind in kinds
        for n, _, *size in shapes
    )


def _metadata(spec: UNetSpec, layout: str, sides: str) -> dict[str, str]:
    return {
        convert.SPEC_METADATA_KEY: spec.to_json(),
        "layout": layout,
        "input_sides": sides,
        "made_by": "unet-bench impls/export.py",
    }


def _sides_text(spec: UNetSpec, job: _Job, sides: _Sides | None) -> str:
    if sides is None:
        return f"{'x'.join(map(str, job.size))} only"
    if sides.period == 1:
        return f"any side >= {sides.least}"
    first = sides.offset + sides.period * sides.least
    return f"{sides.symbol('k')} for k >= {sides.least}: {first}, {first + sides.period}, ..."


# -- torch: ONNX and AOTInductor -----------------------------------------------------------


def _torch_model(job: _Job):
    import torch

    from impls import torch_unet

    model = convert.to_torch(job.weights, torch_unet.build(job.spec)).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, torch


def _torch_reference(model, torch, shape: tuple[int, ...]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(seeded_input(shape))).numpy()


def _torch_dims(job: _Job, sides: _Sides, torch, *, derived: bool) -> dict:
    """dynamic_shapes for torch.export: symbolic batch and sides (height and width; and depth in 3D).

    ``derived``: each side as ``offset + period * k``, so that the valid sizes are the only ones
    it can express (ONNX names the dimension after it). Else plain symbols, whose rule the
    model checks with torch._check, kept as runtime asserts (AOTInductor runs them)."""
    Dim = torch.export.Dim
    axes = SPATIAL_AXES[-job.spec.dims :]
    dims = {0: Dim("batch", min=1)}
    for index, axis in enumerate(axes, start=2):
        if not derived or sides.period == 1:
            dims[index] = Dim(axis, min=sides.offset + sides.period * sides.least)
        else:
            dims[index] = sides.period * Dim(_SYMBOLS[axis], min=sides.least) + sides.offset
    return {"x": dims}


def _size_checked(model, sides: _Sides, torch):
    """``model`` behind the spec's size rule as torch._check calls, which torch.export keeps as
    runtime asserts when told to defer them."""

    class SizeChecked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            for side in x.shape[2:]:
                torch._check(side >= sides.offset + sides.period * sides.least)
                torch._check((side - sides.offset) % sides.period == 0)
            return self.model(x)

    return SizeChecked().eval()


@contextlib.contextmanager
def _legacy_tf32_readable(torch) -> Iterator[None]:
    """cuDNN's TF32 flags set so that torch's legacy getter can read them, for the block.

    torch.export reads ``cudnn.allow_tf32`` (``cudnn.set_flags``), which raises once a process
    has chosen IEEE fp32 with the new ``fp32_precision`` API, as the benchmark runners do
    (pytorch/pytorch#179445), as does torch.onnx's and AOTInductor's lowering. The export runs
    no convolution on a GPU; the flags are restored after it.
    """
    cudnn = torch.backends.cudnn
    saved = (
        [(flags, flags.fp32_precision) for flags in (cudnn.conv, cudnn.rnn)]
        if hasattr(torch.backends, "fp32_precision")
        else []
    )
    try:
        for flags, _ in saved:
            flags.fp32_precision = "tf32"
        yield
    finally:
        for flags, value in saved:
            flags.fp32_precision = value


def _torch_export(job: _Job, torch, model, example, **options):
    """torch.export.export of ``model`` at ``example``, its failure an ExportError naming it."""
    try:
        return torch.export.export(model, (example,), **options)
    except Exception as error:  # torch.export raises many kinds: each is told
        raise ExportError(f"{job.out}: torch.export failed for {job.spec}: {_first_line(error)}") from error


def _example_shape(shape: tuple[int, ...], sides: _Sides | None) -> tuple[int, ...]:
    """The shape to trace at: torch.export fixes a dimension of size 1, so a dynamic batch is
    traced at 2 (the file is then checked at the batch asked for)."""
    return (max(shape[0], 2), *shape[1:]) if sides else shape


def _onnx_session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: jax2onnx's files draw shape-merge warnings
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _save_onnx(proto, path: Path, metadata: dict[str, str]) -> None:
    import onnx

    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _name_dims(proto) -> None:
    """torch.export's symbols (s77, 16*s39) in the graph's shapes renamed batch, h and w (and d), as
    the dynamic shapes named them (torch.onnx keeps the names only of symbols it makes itself)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {}
    axes = SPATIAL_AXES[2 - len(dims) :]  # the input's last len(dims) - 2 axes
    for index, name in ((0, "batch"), *enumerate((_SYMBOLS[axis] for axis in axes), start=2)):
        symbols = re.findall(r"\bs\d+\b", dims[index].dim_param)
        if len(symbols) == 1:
            names[symbols[0]] = name
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda match: names[match[1]], dim.dim_param)


def _onnx_input_shape(path: Path) -> str:
    session = _onnx_session(path)
    return "(" + ", ".join(map(str, session.get_inputs()[0].shape)) + ")"


def _check_onnx(job: _Job, path: Path, shapes, reference: Callable[[tuple[int, ...]], np.ndarray], what: str):
    session = _onnx_session(path)
    name = session.get_inputs()[0].name
    return tuple(
        check_export(
            what, job.out, shape, session.run(None, {name: seeded_input(shape)})[0], reference(shape)
        )
        for shape in shapes
    )


def _onnx_from_torch(job: _Job) -> Export:
    model, torch = _torch_model(job)
    sides = _sides(job.spec, torch_route=True) if job.dynamic else None
    shapes = job.inputs(sides)
    example = torch.from_numpy(seeded_input(_example_shape(shapes[0], sides)))
    dims = _torch_dims(job, sides, torch, derived=True) if sides else None
    with _quiet("torch.onnx", "torch.export", "torch._dynamo"), _legacy_tf32_readable(torch):
        # torch.export first, then the program to torch.onnx: given the model and dynamic_shapes,
        # torch.onnx.export loses the derived sizes and fails from depth 3 on ("Could not guard on
        # data-dependent expression" at the centre crop), where torch.export alone keeps them.
        program = _torch_export(job, torch, model, example, dynamic_shapes=dims)
        try:
            program = torch.onnx.export(
                program,
                dynamo=True,
                opset_version=OPSET,
                input_names=["x"],
                output_names=["logits"],
                verbose=False,
            )
        except Exception as error:
            raise ExportError(
                f"{job.out}: torch.onnx.export failed for {job.spec}: {_first_line(error)}"
            ) from error
    proto = program.model_proto  # made anew at each access
    if sides:
        _name_dims(proto)
    with atomic_output(job.out, job.checkpoint) as temporary:
        _save_onnx(proto, temporary, _metadata(job.spec, job.layout(), _sides_text(job.spec, job, sides)))
        checks = _check_onnx(
            job, temporary, shapes, lambda shape: _torch_reference(model, torch, shape), "ONNX model"
        )
        declared = _onnx_input_shape(temporary)
    return Export(job.out, "onnx (torch.onnx, dynamo)", job.spec, job.layout(), declared, checks)


def _aoti(job: _Job) -> Export:
    model, torch = _torch_model(job)
    sides = _sides(job.spec, torch_route=True) if job.dynamic else None
    shapes = job.inputs(sides)
    example = torch.from_numpy(seeded_input(_example_shape(shapes[0], sides)))
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    metadata = _metadata(job.spec, job.layout(), _sides_text(job.spec, job, sides))
    with _quiet("torch.export", "torch._dynamo", "torch._inductor"), _legacy_tf32_readable(torch):
        if sides:
            program = _torch_export(
                job,
                torch,
                _size_checked(model, sides, torch),
                example,
                dynamic_shapes=_torch_dims(job, sides, torch, derived=False),
                prefer_deferred_runtime_asserts_over_guards=True,
            )
        else:
            program = _torch_export(job, torch, model, example)
        with atomic_output(job.out, job.checkpoint) as temporary:
            with temporary.open("w+b") as package:  # a file object: the temporary name has no .pt2
                # A dynamic batch of 1 is valid: AOTI_RUNTIME_CHECK_INPUTS=1 would refuse it by default
                configs = {"aot_inductor.metadata": metadata, "aot_inductor.check_lowerbound": not sides}
                aoti_compile_and_package(program, package_path=package, inductor_configs=configs)
            runner = aoti_load_package(str(temporary))

            def run(shape: tuple[int, ...]) -> np.ndarray:
                with torch.no_grad():
                    out = runner(torch.from_numpy(seeded_input(shape)))
                return (out[0] if isinstance(out, (list, tuple)) else out).numpy()

            checks = tuple(
                check_export(
                    "AOTInductor package", job.out, shape, run(shape), _torch_reference(model, torch, shape)
                )
                for shape in shapes
            )
    if sides:
        *first, last = axes = SPATIAL_AXES[-job.spec.dims :]
        declared = (
            f"(batch, {job.spec.in_channels}, {', '.join(axes)}), {', '.join(first)} and {last} "
            f"{_sides_text(job.spec, job, sides)}"
        )
    else:
        declared = str(shapes[0])
    return Export(job.out, "aoti (torch.export + AOTInductor)", job.spec, job.layout(), declared, checks)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


# -- jax: jax.export and jax2onnx --------------------------------------------------------------


def _flax_forward(job: _Job, *, upconv_matmul: bool = False):
    """The Flax model in eval mode, as a jitted function of a channels-last batch, and the model."""
    import jax
    from flax import nnx

    from impls import flax_unet

    model = convert.to_flax(job.weights, flax_unet.abstract(job.spec, upconv_matmul=upconv_matmul)).eval()
    graphdef, state = nnx.split(model)
    return jax.jit(lambda x: nnx.merge(graphdef, state)(x)), model


def _symbolic_input(job: _Job, sides: _Sides, jnp) -> jax.ShapeDtypeStruct:
    import jax

    symbols = [_SYMBOLS[axis] for axis in SPATIAL_AXES[-job.spec.dims :]]
    shape = jax.export.symbolic_shape(
        f"batch, {', '.join(sides.symbol(symbol) for symbol in symbols)}, {job.spec.in_channels}",
        constraints=[f"{symbol} >= {sides.least}" for symbol in symbols],
    )
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _jax(job: _Job) -> Export:
    import jax
    import jax.numpy as jnp

    forward, _ = _flax_forward(job)
    sides = _sides(job.spec, torch_route=False) if job.dynamic else None
    shapes = job.inputs(sides, channels_last=True)
    spec_in = _symbolic_input(job, sides, jnp) if sides else jax.ShapeDtypeStruct(shapes[0], jnp.float32)
    try:
        exported = jax.export.export(forward, platforms=("cpu", "cuda"))(spec_in)
    except Exception as error:
        raise ExportError(f"{job.out}: jax.export failed for {job.spec}: {_first_line(error)}") from error
    with atomic_output(job.out, job.checkpoint) as temporary:
        temporary.write_bytes(exported.serialize())
        reloaded = jax.export.deserialize(bytearray(temporary.read_bytes()))
        checks = tuple(
            check_export(
                "StableHLO",
                job.out,
                shape,
                np.asarray(reloaded.call(seeded_input(shape))),
                np.asarray(forward(seeded_input(shape))),
            )
            for shape in shapes
        )
    declared = "(" + ", ".join(map(str, reloaded.in_avals[0].shape)) + ")"
    route = "jax (jax.export, StableHLO for cpu and cuda)"
    return Export(job.out, route, job.spec, job.layout(channels_last=True), declared, checks)


def _onnx_from_flax(job: _Job) -> Export:
    """jax2onnx of the Flax model, with the transposed convs in their matmul form (the same
    function, see flax_unet.MatmulConvTranspose): jax2onnx 0.13.0 lowers a dilated-input conv to an
    ONNX ConvTranspose of stride 1, which computes something else."""
    import jax
    import jax.numpy as jnp

    with _quiet("jax2onnx"):
        from jax2onnx import to_onnx

    forward, model = _flax_forward(job, upconv_matmul=True)
    shapes = job.inputs(None)
    n, c, *sides = shapes[0]
    try:
        with _quiet("jax2onnx"):
            proto = to_onnx(
                model,
                [jax.ShapeDtypeStruct((n, *sides, c), jnp.float32)],
                opset=OPSET,
                inputs_as_nchw=[0],
                outputs_as_nchw=[0],
                input_names=["x"],
                output_names=["logits"],
            )
    except Exception as error:
        raise ExportError(f"{job.out}: jax2onnx failed for {job.spec}: {_first_line(error)}") from error

    def reference(shape: tuple[int, ...]) -> np.ndarray:
        return np.moveaxis(np.asarray(forward(np.moveaxis(seeded_input(shape), 1, -1))), -1, 1)

    with atomic_output(job.out, job.checkpoint) as temporary:
        _save_onnx(proto, temporary, _metadata(job.spec, job.layout(), _sides_text(job.spec, job, None)))
        checks = _check_onnx(job, temporary, shapes, reference, "ONNX model (from Flax)")
        declared = _onnx_input_shape(temporary)
    return Export(job.out, "onnx (Flax through jax2onnx)", job.spec, job.layout(), declared, checks)


# -- the functions -------------------------------------------------------------------------


def to_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    batch: int = 1,
    size: int | tuple[int, ...] | None = None,
    dynamic: bool = False,
    via: str = "torch",
    force: bool = False,
) -> Export:
    """An ONNX file (opset 18, NCHW) of the checkpoint's model, made from its PyTorch model
    (``via="torch"``) or its Flax model (``via="flax"``, fixed sizes only), verified in onnxruntime."""
    if via not in VIAS:
        raise ValueError(f"via={via!r}: expected one of {', '.join(VIAS)}")
    if via == "flax" and dynamic:
        raise ValueError(
            "via='flax' with dynamic=True: jax2onnx 0.13.0 keeps no symbolic size through a max-pool "
            "(its output keeps the input's height) and resizes only fixed sizes; export it at fixed "
            "sizes, or take the dynamic ONNX file from via='torch'"
        )
    options = dict(batch=batch, size=size, dynamic=dynamic, force=force)
    job = _job(checkpoint, out, torch_route=via == "torch", route="onnx", **options)
    if via == "flax" and job.spec.dims == 3:
        raise ValueError(
            f"{checkpoint}: via='flax' takes 2D U-Nets only: jax2onnx 0.13.0 moves the channel axis "
            "of 4-D inputs alone (inputs_as_nchw) and fails on this 3D network's graph; take the ONNX "
            "file from via='torch', which exports 3D checkpoints (fixed or dynamic sizes)"
        )
    if dynamic and job.spec.pad_to_skip:
        raise ValueError(
            f"{checkpoint}: {job.spec} with dynamic=True to ONNX: its pools drop odd rows, which "
            "torch.export can make symbolic only with runtime asserts, and ONNX keeps no asserts "
            "(at depth 4: 'Constraints violated (height, width)'); export it at fixed sizes, or "
            "dynamic to aoti or jax, which keep them"
        )
    return _onnx_from_torch(job) if via == "torch" else _onnx_from_flax(job)


def to_aoti(
    checkpoint: str | Path,
    out: str | Path,
    *,
    batch: int = 1,
    size: int | tuple[int, ...] | None = None,
    dynamic: bool = False,
    force: bool = False,
) -> Export:
    """An AOTInductor package (.pt2, NCHW) of the checkpoint's PyTorch model, verified loaded."""
    options = dict(batch=batch, size=size, dynamic=dynamic, force=force)
    return _aoti(_job(checkpoint, out, torch_route=True, route="aoti", **options))


def to_jax(
    checkpoint: str | Path,
    out: str | Path,
    *,
    batch: int = 1,
    size: int | tuple[int, ...] | None = None,
    dynamic: bool = False,
    force: bool = False,
) -> Export:
    """Serialized jax.export StableHLO (NHWC) of the checkpoint's Flax model, verified reloaded."""
    options = dict(batch=batch, size=size, dynamic=dynamic, force=force)
    return _jax(_job(checkpoint, out, torch_route=False, route="jax", **options))


def export(
    checkpoint: str | Path,
    to: str,
    out: str | Path,
    *,
    batch: int = 1,
    size: int | tuple[int, ...] | None = None,
    dynamic: bool = False,
    via: str | None = None,
    force: bool = False,
) -> Export:
    """``to_onnx``, ``to_aoti`` or ``to_jax`` by name; ``via`` is for ``onnx`` only. ``out`` ends in
    the route's suffix (SUFFIXES) and is an existing file only with ``force``."""
    if to not in ROUTES:
        raise ValueError(f"to={to!r}: expected one of {', '.join(ROUTES)}")
    if via is not None and to != "onnx":
        raise ValueError(f"via={via!r} is for to='onnx' only; to={to!r} exports the {_SOURCE[to]} model")
    options = dict(batch=batch, size=size, dynamic=dynamic, force=force)
    if to == "onnx":
        return to_onnx(checkpoint, out, via=via or "torch", **options)
    return (to_aoti if to == "aoti" else to_jax)(checkpoint, out, **options)


_SOURCE = {"aoti": "PyTorch", "jax": "Flax"}


def load_jax(file: str | Path) -> jax.export.Exported:
    """A file written by ``to_jax``, ready to ``.call(x)``: ``jax.export.deserialize`` of its bytes."""
    import jax

    return jax.export.deserialize(bytearray(Path(file).read_bytes()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m impls.export",
        description="Export a canonical U-Net checkpoint, checked against its source model on seeded inputs.",
    )
    parser.add_argument("checkpoint", type=Path, help="CHECKPOINT.safetensors (as impls.convert.save writes)")
    parser.add_argument(
        "--to",
        required=True,
        choices=ROUTES,
        help="onnx: an ONNX file (opset 18, NCHW); aoti: an AOTInductor .pt2 package (NCHW); "
        "jax: serialized jax.export StableHLO (NHWC)",
    )
    parser.add_argument(
        "out",
        type=Path,
        help="the file to write: OUT.onnx, OUT.pt2 or OUT.stablehlo (never the checkpoint itself)",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--batch", type=int, default=1, help="batch of the example input (default 1)")
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        metavar="SIDE",
        help="input height and width (H W), or depth, height and width for a 3D checkpoint (D H W), "
        "or one side for all; "
        f"default: the valid side nearest {DEFAULT_SIDE} ({DEFAULT_SIDE_3D} in 3D)",
    )
    parser.add_argument(
        "--dynamic", action="store_true", help="symbolic batch and spatial sizes (the spec's valid sizes)"
    )
    parser.add_argument(
        "--via",
        choices=VIAS,
        help="for --to onnx: from the PyTorch model (default) or the Flax model (jax2onnx)",
    )
    args = parser.parse_args(argv)
    try:
        result = export(
            args.checkpoint,
            args.to,
            args.out,
            batch=args.batch,
            size=None if args.size is None else tuple(args.size),
            dynamic=args.dynamic,
            via=args.via,
            force=args.force,
        )
    except (ValueError, OSError) as error:  # each names the file and the fix in one line: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
