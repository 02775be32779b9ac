"""RunConfig: everything that defines one benchmark case, listed once.

A frozen dataclass with a JSON round trip (like ``UNetSpec``): the sweep
builds one per case, hands it to fresh worker processes as JSON, and records
it with every result. It validates itself, so a bad case is refused with the
same message wherever it is made. Imports no framework.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from bench.device_names import well_formed
from impls.spec import UNetSpec

COMPILED_TORCH_PATHS = ("torch-compile", "torch-compile-max-autotune", "torch-compile-reduce-overhead")
TORCH_PATHS = ("torch-eager", *COMPILED_TORCH_PATHS, "torch-plain")
JAX_PATHS = ("jax", "jax-plain")
# Inference runtimes, each running a file exported from the canonical weights (impls/export.py);
# they infer and predict tiles, and train nothing.
RUNTIME_PATHS = ("onnxruntime", "openvino", "torch-aoti", "tensorrt")
PATHS = (*TORCH_PATHS, *JAX_PATHS, *RUNTIME_PATHS)
# Calibration paths, "torch-eager+N%": torch eager's call plus N% more of the same real work, each
# with workers of their own, to measure how often the verdict rule calls known effects (docs/verdicts.md).
CALIBRATION_REFERENCE = "torch-eager"
CALIBRATION_PATH = re.compile(r"torch-eager\+(\d{1,3})%")
# Paths that compile nothing: their first call is just a call
COMPILES_NOTHING = ("torch-eager", "torch-plain")
# The same model written as each framework's tutorials write it, none of the project's tuned
# choices: what those choices add. References, not contenders.
# The plain references, each with the project's path it mirrors: that path against it is what the
# project's own code costs or gains (in no verdict).
MIRRORED = {"torch-plain": "torch-eager", "jax-plain": "jax"}
PLAIN_PATHS = tuple(MIRRORED)
CUDA_ONLY_PATHS = ("torch-compile-max-autotune", "torch-compile-reduce-overhead", "tensorrt")
# What a runtime path imports beyond the lock's frameworks; missing, its cases are not-installed.
RUNTIME_PACKAGES = {
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "openvino": ("openvino", "onnx", "onnxscript"),
    "torch-aoti": (),
    "tensorrt": ("torch_tensorrt",),
}
# The precisions each runtime computes, and why not the others
RUNTIME_PRECISIONS = {
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16"),  # bf16 where the CPU has AVX-512 BF16 or AMX (asked of OpenVINO)
    "torch-aoti": ("fp32",),
    "tensorrt": ("fp32", "bf16"),
}
NO_REDUCED_PRECISION = {
    "onnxruntime": "onnxruntime's CPU and CUDA execution providers have no bf16 convolutions",
    "torch-aoti": "an AOTInductor package runs the dtypes it was exported in; a bf16 export would "
    "not compute torch's autocast, which the other paths' bf16 is",
}
# "tiled": one whole image predicted in tiles (impls/tiling.py); size is the tile side,
# batch the tiles per call. "window": its counterpart for a 3D spec, a whole volume by sliding window
# (Gaussian-blended where the padding is "same", as impls/tiling.py does).
TASKS = ("train", "infer", "tiled", "window")
WHOLE_INPUT_TASKS = {"tiled": 2, "window": 3}  # each with the dimensionality it predicts


def size_label(size: int, dims: int) -> str:
    """An input side as ids, groups and reports name it: 128px, or 32vox for a volume of 32^3 voxels."""
    return f"{size}px" if dims == 2 else f"{size}vox"


def whole_input_task(dims: int) -> str:
    """The task that predicts a whole input of ``dims`` spatial axes: "tiled", or "window" in 3D."""
    return next(task for task, d in WHOLE_INPUT_TASKS.items() if d == dims)


PRECISIONS = ("fp32", "bf16")
LOSSES = ("ce", "weighted")  # softmax cross-entropy; the same weighted pixel by pixel
UPCONVS = ("auto", "native", "matmul")
FREEZINGS = ("auto", "on", "off")  # inductor's freezing of compiled inference; "auto": measured
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # torch's; "auto": the faster, measured
SCALINGS = ("weak", "strong")
LEARNING_RATE = 1e-4  # Adam's, default betas and eps, in every framework
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # those defaults (torch's and optax's), for the gate's own Adam
POLY_POWER = 0.9  # nnU-Net's "poly" learning-rate decay, lr * (1 - step / steps) ** 0.9
# Fields added after keys and records were first written: left out at their defaults (None), so
# that every key (bench/keys.py) and record stays as it was.
LATER_FIELDS = ("learning_rate_decay_steps",)


class NotApplicable(ValueError):
    """A case its path cannot run by design (training on an inference runtime, a precision the
    runtime lacks): recorded as not-applicable, never as a failure."""


def calibration_path(percent: int) -> str:
    """The calibration path that adds ``percent`` % to torch eager's call."""
    return f"{CALIBRATION_REFERENCE}+{percent}%"


def calibration_effect(path: str) -> float | None:
    """The share of work a calibration path adds (0.1 for "torch-eager+10%"); None for other paths."""
    match = CALIBRATION_PATH.fullmatch(path)
    return int(match.group(1)) / 100 if match else None


def compiles_nothing(path: str) -> bool:
    """Whether the path's first call is just a call: nothing compiled, nothing cached."""
    return path in COMPILES_NOTHING or calibration_effect(path) is not None


def jax_platform_problem(device: str) -> str | None:
    """Why JAX, told by JAX_PLATFORMS which platforms it may use, could not run on ``device``; None
    where it can (or where JAX_PLATFORMS is not set)."""
    told = os.environ.get("JAX_PLATFORMS", "")
    platforms = {name.strip() for name in told.split(",") if name.strip()}
    needed = {"cpu"} if device == "cpu" else {"cuda", "gpu"}
    if not platforms or platforms & needed:
        return None
    name = "cpu" if device == "cpu" else "cuda"
    return (
        f"JAX_PLATFORMS={told} leaves out {name}, the run's device ({device}): unset it, or set "
        f"JAX_PLATFORMS={name}"
    )


def paths_problem(paths: Sequence[str], device: str) -> str | None:
    """Why ``paths`` (as --paths gave them) cannot all run on ``device``: JAX_PLATFORMS leaving the
    device out where a jax path runs, or a CUDA-only path on a CPU; None where they can."""
    jax_problem = jax_platform_problem(device)
    if jax_problem and any(framework(path) == "jax" for path in paths):
        return f"--paths {','.join(paths)}: {jax_problem}"
    cuda_only = [path for path in paths if path in CUDA_ONLY_PATHS]
    if device == "cpu" and cuda_only:
        verb = "needs" if len(cuda_only) == 1 else "need"
        return f"--paths: {', '.join(cuda_only)} {verb} a CUDA device; this run's device is cpu"
    return None


def competes(path: str) -> bool:
    """Whether a path is in the verdicts: the plain references and the calibration paths are not."""
    return path not in PLAIN_PATHS and calibration_effect(path) is None


def verdict_roles(paths: Iterable[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """A group's paths as its verdict takes them: those that compete; each calibration path with the
    path it is measured against; each project path with the plain reference it is measured against
    (where both ran). Only the first take part in the verdict."""
    paths = list(paths)
    competing = [path for path in paths if competes(path)]
    calibration = {
        path: CALIBRATION_REFERENCE
        for path in paths
        if calibration_effect(path) is not None and CALIBRATION_REFERENCE in paths
    }
    plain = {MIRRORED[path]: path for path in paths if path in MIRRORED and MIRRORED[path] in paths}
    return competing, calibration, plain


def known_path(path: str) -> bool:
    return path in PATHS or calibration_effect(path) is not None


def framework(path: str) -> str:
    """Which framework a path runs on: "torch", "jax" or "runtime" (an inference runtime)."""
    if path in JAX_PATHS:
        return "jax"
    return "runtime" if path in RUNTIME_PATHS else "torch"


def memory_kind(path: str) -> str:
    """The kind of process a path's worker is, for the memory estimate (impls/footprint.py KINDS)."""
    if path in COMPILED_TORCH_PATHS:
        return "torch-compiled"
    return "torch-eager" if framework(path) == "torch" else framework(path)


def freezing_applies(config: RunConfig) -> bool:
    """Whether inductor's freezing is one of the case's settings: compiled inference on a CPU,
    where it folds the weights into the graph and prepacks them for oneDNN."""
    return config.path in COMPILED_TORCH_PATHS and config.task != "train" and config.device == "cpu"


def unavailable(config: RunConfig) -> tuple[str, str] | None:
    """("not-applicable" or "not-installed", why) for a case its path cannot run here; None if it can."""
    path = config.path
    if path not in RUNTIME_PATHS:
        return None
    if config.task == "train":
        return "not-applicable", f"{path} is an inference runtime: it runs an exported forward, no training"
    if path == "openvino" and config.device != "cpu":
        return "not-applicable", "openvino runs here through its CPU plugin only"
    missing = [name for name in RUNTIME_PACKAGES[path] if importlib.util.find_spec(name) is None]
    if missing:
        return "not-installed", (
            f"{path} needs {', '.join(missing)}, not installed here; docs/deployment.md "
            "('Dependencies') says what to install"
        )
    if path == "onnxruntime" and config.device != "cpu" and not _installed("onnxruntime-gpu"):
        return "not-installed", (
            "onnxruntime on CUDA needs onnxruntime-gpu in place of onnxruntime; docs/install-gpu.md says how"
        )
    if config.precision not in RUNTIME_PRECISIONS[path]:
        return "not-applicable", f"{path} in {config.precision}: {NO_REDUCED_PRECISION[path]}"
    return None


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def check_device(device: str) -> None:
    if not well_formed(device):
        raise ValueError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


@dataclass(frozen=True)
class RunConfig:
    """One case: a framework path, a task, a U-Net, a shape, a precision and a placement.

    ``devices``: data-parallel over that many devices of ``device``'s kind,
    ``batch`` being the global batch, ``scaling`` "weak" or "strong" (a label
    of the sweep). ``tf32`` lets fp32 convs and matmuls use TF32 on CUDA (both
    frameworks alike; no effect on a CPU). ``upconv``: the transposed convs'
    exact form, "native", "matmul" or "auto" (the faster, measured). ``memory_format``:
    torch's layout of the model and batch, "channels_last", "contiguous" or "auto" (the
    faster whole eager step, measured); JAX ignores it. ``freezing``: inductor's freezing of
    compiled inference on a CPU, "on", "off" or "auto" (the faster, measured); other cases run
    without it. The plain paths ignore all three and
    use the frameworks' defaults (native up-conv, contiguous NCHW). ``loss``
    "weighted" trains on the paper's pixel-weighted cross-entropy.
    ``calibration_repeats``: how many slices of extra work a calibration path adds to each call
    ("auto": as many as make up its share of the call, timed by its first worker; see
    calibration_load.CalibrationLoad). ``image_size``: the side of the whole image of the "tiled"
    task (the whole volume of "window").
    ``weights_file``: a canonical safetensors file to start from; None for PyTorch's default
    initialisation under the workload's seed. ``learning_rate_decay_steps``: Adam's learning rate
    decays to 0 over that many steps by nnU-Net's poly schedule, ``learning_rate * (1 - k /
    steps) ** POLY_POWER`` at the (k+1)-th step, in every framework; None keeps it constant (the
    benchmarks').
    """

    path: str
    spec: UNetSpec
    size: int
    batch: int
    precision: str = "fp32"
    device: str = "cpu"
    task: str = "train"
    devices: int | None = None
    scaling: str | None = None
    sync_bn: bool = False
    tf32: bool = False
    upconv: str = "auto"
    memory_format: str = "auto"
    freezing: str = "auto"
    loss: str = "ce"
    learning_rate: float = LEARNING_RATE
    calibration_repeats: int | str = "auto"
    image_size: int | None = None
    weights_file: str | None = None
    learning_rate_decay_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.spec, dict):  # from JSON
            object.__setattr__(self, "spec", UNetSpec(**self.spec))
        if not known_path(self.path):
            raise ValueError(
                f"path {self.path!r}: expected one of {', '.join(PATHS)}, or torch-eager+N% (calibration)"
            )
        if self.calibration_repeats != "auto" and (
            isinstance(self.calibration_repeats, bool)
            or not isinstance(self.calibration_repeats, int)
            or self.calibration_repeats < 0
        ):
            raise ValueError(
                f"calibration_repeats {self.calibration_repeats!r}: expected 'auto' or a count >= 0"
            )
        for name, value, allowed in (
            ("task", self.task, TASKS),
            ("precision", self.precision, (*PRECISIONS, "fp64")),  # fp64: equivalence tests only
            ("loss", self.loss, LOSSES),
            ("upconv", self.upconv, UPCONVS),
            ("memory_format", self.memory_format, MEMORY_FORMATS),
            ("freezing", self.freezing, FREEZINGS),
        ):
            if value not in allowed:
                shown = PRECISIONS if name == "precision" else allowed
                raise ValueError(f"{name} {value!r}: expected one of {', '.join(shown)}")
        check_device(self.device)
        if self.path in CUDA_ONLY_PATHS and self.device == "cpu":
            raise ValueError(
                f"path {self.path!r} needs a CUDA device (it relies on CUDA graphs or Triton autotuning)"
            )
        for name in ("size", "batch", "devices", "image_size", "learning_rate_decay_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} {value!r}: expected a whole number >= 1")
        if self.devices is not None and self.path in RUNTIME_PATHS:
            raise ValueError(f"path {self.path!r} runs on one device: expected devices None")
        if self.devices is not None and self.batch % self.devices:
            raise ValueError(f"batch {self.batch} must split evenly over {self.devices} devices")
        if self.scaling is not None and self.scaling not in SCALINGS:
            raise ValueError(f"scaling {self.scaling!r}: expected one of {', '.join(SCALINGS)}")
        if self.task in WHOLE_INPUT_TASKS:
            dims = WHOLE_INPUT_TASKS[self.task]
            if self.spec.dims != dims:
                raise ValueError(
                    f"task {self.task!r} is for {dims}D U-Nets: expected "
                    f"{whole_input_task(self.spec.dims)!r} for this one"
                )
            if self.image_size is None:
                raise ValueError(f"task {self.task!r} needs image_size, the side of the whole input")
        self.spec.check_input(
            (self.batch // (self.devices or 1), self.spec.in_channels, *(self.size,) * self.spec.dims)
        )

    @property
    def framework(self) -> str:
        return framework(self.path)

    @property
    def id(self) -> str:
        parts = (self.scaling, self.devices and f"{self.devices}dev")
        parallel = "".join(f"-{part}" for part in parts if part)
        return f"{self.task}-{self.path}-{self.size_label}-b{self.batch}-{self.precision}{parallel}"

    @property
    def group(self) -> str:
        """The cases that compete: the same task, shape, precision and device, any path."""
        parallel = f" {self.scaling} scaling" if self.devices else ""
        return f"{self.task} {self.size_label} b{self.batch} {self.precision} {self.device}{parallel}"

    @property
    def decay_description(self) -> str:
        """The learning rate's decay, as the runners record it after their optimizer: "" if constant."""
        steps = self.learning_rate_decay_steps
        return f", poly decay to 0 over {steps} steps (power {POLY_POWER})" if steps else ""

    @property
    def size_label(self) -> str:
        return size_label(self.size, self.spec.dims)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        fields = {**dataclasses.asdict(self), "spec": self.spec.to_dict()}
        return {k: v for k, v in fields.items() if not (k in LATER_FIELDS and v is None)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        fields = json.loads(text)
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"RunConfig: unknown fields {unknown}")
        return cls(**fields)
