"""Inference runtimes: ONNX Runtime, OpenVINO, AOTInductor and TensorRT, each running a file
exported from the canonical weights.

The runner holds the workload's batch and an ``Engine``, one small class per runtime that
exports (through impls/export.py, checked against the model there) and loads. Nothing is
exported or loaded until the first call, so that the first call's time is the path's compile
time: the export and the runtime's build from nothing in a cold worker, the load of the file
and the runtime's own cache in a cached one. Exports go to ``$UNET_BENCH_EXPORT_DIR`` (the
case's compile folder, set by the worker) under a name that holds the case and the code, or to a
folder of the runner's own. Each engine imports its runtime only when it runs; a cached ONNX
Runtime or OpenVINO worker imports no torch at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import environment, keys, memory
from bench.device_names import cuda_index
from bench.run_config import NotApplicable, RunConfig
from bench.runners.workload import SEED, batch, workload
from impls import convert
from impls.files import atomic_output

EXPORT_DIR = "UNET_BENCH_EXPORT_DIR"
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # its inference precision hints


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Loaded:
    """An exported model ready to run: a timed call takes a batch already on the device and returns
    when the device has finished, its result left where the runtime put it (as the torch and JAX
    runners leave theirs)."""

    to_input: Callable[[np.ndarray], Any]  # a host batch (NCHW float32) onto the device
    run: Callable[[Any], Any]
    to_host: Callable[[Any], np.ndarray]  # a result's logits (NCHW float32) on the host


def _torch_loaded(module: Callable, device: Any) -> Loaded:
    """A torch callable (an AOTInductor package, a TensorRT program) as a Loaded."""
    import torch

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = module(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out[0] if isinstance(out, (list, tuple)) else out

    return Loaded(lambda x: torch.from_numpy(x).to(device), run, lambda out: out.float().cpu().numpy())


def _version(package: str) -> str:
    return environment.versions().get(package, "?")  # as every result records it


class OnnxRuntime:
    """The ONNX file (torch.onnx, dynamo) in an onnxruntime session: the CPU execution provider on
    a CPU; on CUDA the TensorRT and CUDA providers where installed (onnxruntime-gpu), in that
    order, inputs and outputs bound on the device."""

    suffix, route = ".onnx", "onnx"

    def __init__(self, config: RunConfig, folder: Path) -> None:
        self.config, self.folder = config, folder
        self.cuda = config.device != "cpu"
        self.settings: dict[str, Any] = {"runtime": f"onnxruntime {_version('onnxruntime')}"}

    def load(self, file: Path) -> Loaded:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if self.cuda:
            device_id = cuda_index(self.config.device)
            cache = str(self.folder / "tensorrt")
            wanted = [
                (
                    "TensorrtExecutionProvider",
                    {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache},
                ),
                ("CUDAExecutionProvider", {"device_id": device_id}),
            ]
            wanted = [p for p in wanted if p[0] in available]
            if not wanted:
                raise NotApplicable(
                    f"onnxruntime on {self.config.device}: this onnxruntime has only {available}; "
                    "install onnxruntime-gpu (docs/install-gpu.md)"
                )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(file), options, providers=wanted)
        self.settings["providers"] = session.get_providers()
        name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
        if not self.cuda:
            return Loaded(_same, lambda x: session.run(None, {name: x})[0], _same)
        device_id = cuda_index(self.config.device)
        binding = session.io_binding()

        def run(x) -> Any:
            binding.bind_ortvalue_input(name, x)
            binding.bind_output(output, "cuda", device_id)
            session.run_with_iobinding(binding)  # returns when the device has finished
            return binding.get_outputs()[0]

        def to_input(x: np.ndarray) -> Any:
            return onnxruntime.OrtValue.ortvalue_from_numpy(x, "cuda", device_id)

        return Loaded(to_input, run, lambda out: out.numpy())


class OpenVino:
    """The ONNX file compiled by OpenVINO for the CPU, at the case's precision (an explicit
    inference precision hint: OpenVINO computes in bf16 by default on CPUs that have it), its
    compiled blob kept in OpenVINO's model cache."""

    suffix, route = ".onnx", "onnx"

    def __init__(self, config: RunConfig, folder: Path) -> None:
        self.config, self.folder = config, folder
        self.settings: dict[str, Any] = {"runtime": f"openvino {_version('openvino')}, CPU plugin"}

    def load(self, file: Path) -> Loaded:
        import openvino

        core = openvino.Core()
        if self.config.precision == "bf16":
            capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in capabilities:
                raise NotApplicable(f"openvino bf16: this CPU offers {capabilities}, no BF16")
        core.set_property({"CACHE_DIR": str(self.folder / "openvino")})
        properties = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[self.config.precision],
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, as every path runs
        }
        compiled = core.compile_model(str(file), "CPU", properties)
        self.settings.update(properties)
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> Any:
            request.infer({0: x})
            return request.get_output_tensor(0).data  # a view of the request's buffer

        return Loaded(_same, run, np.array)


class TorchAoti:
    """The AOTInductor package (torch.export, compiled ahead of time for the case's device)."""

    suffix, route = ".pt2", "aoti"

    def __init__(self, config: RunConfig, folder: Path) -> None:
        self.config, self.folder = config, folder
        self.settings: dict[str, Any] = {"runtime": f"torch {_version('torch')} AOTInductor"}

    def load(self, file: Path) -> Loaded:
        import torch
        from torch._inductor import aoti_load_package

        from bench.runners.torch_precision import set_precision

        set_precision(self.config.tf32)
        device = torch.device(self.config.device)
        index = (device.index or 0) if device.type == "cuda" else -1
        return _torch_loaded(aoti_load_package(str(file), device_index=index), device)


class TensorRt:
    """The model compiled by torch-tensorrt (dynamo) into TensorRT engines for the case's shape,
    saved as an ExportedProgram and reloaded from it."""

    suffix, route = ".ep", None  # built here: torch-tensorrt compiles the PyTorch model itself

    def __init__(self, config: RunConfig, folder: Path) -> None:
        self.config, self.folder = config, folder
        self.settings: dict[str, Any] = {"runtime": f"torch-tensorrt {_version('torch-tensorrt')}"}

    def build(self, checkpoint: Path, file: Path) -> None:
        import torch
        import torch_tensorrt

        from impls import export, torch_unet

        weights, spec = convert.load(checkpoint)
        model = convert.to_torch(weights, torch_unet.build(spec)).eval().to(self.config.device)
        x = torch.zeros(self.config.batch, spec.in_channels, *(self.config.size,) * spec.dims)
        x = x.to(self.config.device)
        # fp32: explicit typing keeps the model's dtypes, and TF32 is off unless asked for (TensorRT
        # lets fp32 layers use it by default). bf16: torch-tensorrt's rule-based autocast.
        reduced = {"enable_autocast": True, "low_precision_type": torch.bfloat16}
        with torch.no_grad():
            compiled = torch_tensorrt.compile(
                model,
                ir="dynamo",
                arg_inputs=[x],
                use_explicit_typing=True,
                disable_tf32=not self.config.tf32,
                **(reduced if self.config.precision == "bf16" else {}),
            )
            if self.config.precision == "fp32":  # as impls/export.py checks its exports
                shape = tuple(x.shape)
                seeded = torch.from_numpy(export.seeded_input(shape)).to(self.config.device)
                got, ref = compiled(seeded).float().cpu().numpy(), model(seeded).cpu().numpy()
                export.check_export("TensorRT program", file, shape, got, ref)
            with atomic_output(file, checkpoint, what="TensorRT program") as temporary:
                torch_tensorrt.save(compiled, str(temporary), inputs=[x])

    def load(self, file: Path) -> Loaded:
        import torch
        import torch_tensorrt  # noqa: F401  (registers the engines' ops for the program)

        from bench.runners.torch_precision import set_precision

        set_precision(self.config.tf32)
        return _torch_loaded(torch.export.load(str(file)).module(), torch.device(self.config.device))


ENGINES = {"onnxruntime": OnnxRuntime, "openvino": OpenVino, "torch-aoti": TorchAoti, "tensorrt": TensorRt}


def artifact_name(config: RunConfig, suffix: str) -> str:
    """A name that changes with everything the exported file depends on: the case and the code."""
    return f"{config.path}-{keys.export_key(config)}{suffix}"


class RuntimeRunner:
    """A runtime path's runner: the Runner interface for inference (train_step refuses)."""

    def __init__(self, config: RunConfig, placement: Any = None) -> None:
        self.config = config  # on one device: RunConfig refuses devices for a runtime path
        self.device_name = "cpu" if config.device == "cpu" else environment.device_name(config.device)
        self.work = workload(config)
        given = os.environ.get(EXPORT_DIR)
        self._own_folder = None if given else tempfile.TemporaryDirectory(prefix="unet-bench-export-")
        self.folder = Path(given or self._own_folder.name)
        self.engine = ENGINES[config.path](config, self.folder)
        self.file = self.folder / artifact_name(config, self.engine.suffix)
        self._loaded: Loaded | None = None
        self._input: Any = None
        cuda = config.device != "cpu"
        self.settings: dict[str, Any] = {
            "framework": "runtime",
            "style": "exported from the canonical weights (native up-conv, NCHW); the runtime chooses "
            "its own layouts and kernels",
            "compile": f"export ({self.engine.route or 'built from the PyTorch model'}) and the runtime's "
            "build, in the first call",
            "export": None,
            "memory": "not measured: the runtime allocates on the device outside torch"
            if cuda
            else memory.CPU_METHOD,
            **self.engine.settings,
        }

    # -- export and load, on the first call --------------------------------------------------

    def _checkpoint(self) -> Path:
        if self.config.weights_file is not None:
            return Path(self.config.weights_file)
        file = self.folder / f"weights-{keys.spec_key(self.config.spec)}.safetensors"
        convert.save(file, self.work.weights, self.config.spec)
        return file

    def _export(self) -> None:
        """The exported file, checked against the source model by impls/export.py (err within 1e-5)."""
        from impls import export

        checkpoint = self._checkpoint()
        if self.engine.route is None:
            self.engine.build(checkpoint, self.file)
            self.settings["export"] = "torch-tensorrt compile, saved as an ExportedProgram"
            return
        made = export.export(
            checkpoint, self.engine.route, self.file, batch=self.config.batch, size=self.config.size
        )
        self.settings["export"] = made.summary()

    def _ready(self) -> Loaded:
        if self._loaded is None:
            if not self.file.exists():
                self._export()
            else:
                self.settings["export"] = f"reused {self.file.name} from the case's compile folder"
            self._loaded = self.engine.load(self.file)
            self._input = self._loaded.to_input(self.work.images)
            self.settings.update(self.engine.settings)
        return self._loaded

    # -- the interface -------------------------------------------------------------------------

    def infer(self) -> None:
        self._ready().run(self._input)

    def _no_training(self) -> NotApplicable:
        return NotApplicable(f"{self.config.path} is an inference runtime: it trains nothing")

    def train_step(self) -> None:
        raise self._no_training()

    def fit(self, images: np.ndarray, labels: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
        raise self._no_training()

    def predict(self, images: np.ndarray) -> np.ndarray:
        loaded = self._ready()
        return loaded.to_host(loaded.run(loaded.to_input(np.ascontiguousarray(images, dtype=np.float32))))

    def outputs(self, task: str, seed: int = SEED) -> dict[str, Any]:
        if task != "infer":
            raise self._no_training()
        images = (
            self.work.images
            if seed == SEED
            else batch(self.config.spec, self.config.batch, self.config.size, seed)[0]
        )
        return {"logits": self.predict(images)}

    def reset_state(self) -> None:
        """Nothing to reset: a runtime holds no state that a call changes."""

    def weights(self) -> dict[str, np.ndarray]:
        return self.work.weights

    def reset_peak_memory(self) -> bool:
        memory.reset_peak_rss()
        return self.config.device == "cpu"  # its only figure

    def peak_memory_bytes(self) -> int | None:
        return memory.peak_rss() if self.config.device == "cpu" else None
