"""A worker process: builds one case's runner, then serves the sweep's commands.

``python -m bench.runners.worker JSON``, where JSON holds RunConfig's fields
and the worker's own: ``address`` and ``authkey`` of the controller (the
sweep's front end, bench/sweep/process_worker.py), ``compile_cache`` (a folder for this
case's on-disk compile caches), ``log_dir``. Data-parallel torch workers run
under torchrun, one per device; a jax worker drives all its host's devices.

It sets everything process-wide before the framework is imported: the compile
cache folders, XLA's preallocation off (so that JAX's peak memory means what
torch's does), simulated devices for jax on a CPU. It imports only its own
framework.

Without a controller ``address`` it runs standalone, as on several hosts under
torchrun's rendezvous or ``jax.distributed``: two warm-up steps, then
``steps`` timed ones, and rank 0 writes their seconds to ``out``.

A worker dies with the process that started it, whatever it is doing (Linux's
parent-death signal). Tests inject faults into it from outside (tests/faults/).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

from bench.run_config import RUNTIME_PACKAGES, WHOLE_INPUT_TASKS, RunConfig
from bench.runners.runtime_runner import EXPORT_DIR
from bench.runners.workload import SEED

WORKER_FIELDS = ("address", "authkey", "compile_cache", "log_dir", "steps", "out")


def split_arguments(arguments: dict) -> tuple[RunConfig, dict]:
    """(the case, the worker's own options) from one JSON object."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(arguments) - names - set(WORKER_FIELDS))
    if unknown:
        raise ValueError(f"worker: unknown fields {unknown}; expected RunConfig's and {WORKER_FIELDS}")
    config = RunConfig(**{k: v for k, v in arguments.items() if k in names})
    return config, {k: v for k, v in arguments.items() if k not in names}


def _redirect_output(log: Path) -> None:
    """Send this process's stdout and stderr, C libraries' included, to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for stream in (1, 2):
        os.dup2(fd, stream)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115


def _set_environment(config: RunConfig, compile_cache: str | None) -> None:
    """Before any framework is imported: what they read at import."""
    if compile_cache:
        cache = Path(compile_cache)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
        os.environ["CUDA_CACHE_PATH"] = str(cache / "cuda")
        os.environ[EXPORT_DIR] = str(cache / "export")  # the runtime paths' exported files
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if config.framework == "jax" and config.device == "cpu" and (config.devices or 1) > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={config.devices}".strip()


def _configure_jax(config: RunConfig, compile_cache: str | None) -> None:
    import jax

    if compile_cache:  # the environment variables would be read too late: jax may be imported already
        jax.config.update("jax_compilation_cache_dir", str(Path(compile_cache) / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if config.precision == "fp64":
        jax.config.update("jax_enable_x64", True)


def _placement(config: RunConfig) -> Any:
    if config.devices is None:
        return None
    if config.framework == "jax":
        from bench.runners.jax_dp import MeshPlacement

        return MeshPlacement(config)
    from bench.runners.torch_ddp import DataParallel

    return DataParallel(config)


def warm_up(config: RunConfig) -> None:
    """The framework's one-time start (thread pools, kernel libraries), billed to no case:
    a small conv forward and backward, eager, so that no compile cache is touched; for a runtime
    path, the import of its runtime (its sessions' start counts in its compile time)."""
    if config.framework == "runtime":
        packages = RUNTIME_PACKAGES[config.path]
        importlib.import_module(packages[0] if packages else "torch")  # torch-aoti needs no other
        return
    if config.framework == "jax":
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            return jax.lax.conv(x, w, (1, 1), "SAME").sum()

        x, w = jnp.ones((1, 2, 8, 8)), jnp.ones((2, 2, 3, 3))
        with jax.disable_jit():
            jax.block_until_ready(jax.grad(loss)(w, x))
        return
    import torch

    device = torch.device("cpu" if config.device == "cpu" else config.device)
    w = torch.ones(2, 2, 3, 3, device=device, requires_grad=True)
    torch.nn.functional.conv2d(torch.ones(1, 2, 8, 8, device=device), w, padding=1).sum().backward()


def _die_with_parent() -> None:
    """SIGKILL this process when the one that started it ends (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _tiled(runner: Any, seed: int) -> Any:
    """The "tiled" and "window" tasks: the whole image (volume) drawn with ``seed``, predicted in
    tiles and stitched."""
    from bench.runners.workload import whole_image
    from impls.tiling import predict_tiled

    config = runner.config
    image = whole_image(config.spec, config.image_size, seed)
    return predict_tiled(runner.predict, image, config.spec, tile=config.size, batch=config.batch)


def _outputs(runner: Any, task: str, seed: int) -> dict[str, Any]:
    return {"logits": _tiled(runner, seed)} if task in WHOLE_INPUT_TASKS else runner.outputs(task, seed)


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class Service:
    """The commands a worker answers, over its runner."""

    def __init__(self, config: RunConfig, runner: Any) -> None:
        self.config, self.runner = config, runner
        self._twins: dict[RunConfig, Any] = {}

    def outputs(self, task: str, seed: int = SEED) -> dict[str, Any]:
        """What the parity gate compares (``Runner.outputs``); for "tiled" and "window", the
        stitched logits of the whole image (volume) drawn with ``seed``."""
        return _outputs(self.runner, task, seed)

    def outputs_in(
        self, precision: str, task: str, seed: int = SEED, memory_format: str | None = None
    ) -> dict[str, Any]:
        """``outputs(task, seed)`` of the same case in another precision (fp64 or bf16, which set
        the process-wide precision as this one does) or, for torch, another memory format (by
        default this runner's), from a runner built once per twin: the parity gate's references
        come from one worker."""
        from bench.runners import build

        if precision != self.config.precision and (precision not in ("fp64", "bf16") or self.config.tf32):
            raise ValueError(
                f"outputs_in: {precision!r} next to {self.config.precision!r} with tf32 off only"
            )
        own = self.config
        if own.framework == "torch":  # the layout this runner runs in ("auto" chose it), unless asked
            own = own.replace(memory_format=self.runner.settings["memory_format"])
            twin = own.replace(precision=precision, memory_format=memory_format or own.memory_format)
        else:
            twin = own.replace(precision=precision)
        if twin == own:
            return self.outputs(task, seed)
        if twin not in self._twins:
            self._twins[twin] = build(twin, getattr(self.runner, "placement", None))
        return _outputs(self._twins[twin], task, seed)

    def call(self) -> None:
        """What one timed round runs: one train step, one forward, or one whole image (volume) in tiles."""
        if self.config.task == "train":
            self.runner.train_step()
        elif self.config.task == "infer":
            self.runner.infer()
        else:
            _tiled(self.runner, SEED)

    def first_call(self) -> float:
        """Seconds of the first call: compilation (from whatever caches there are) and one call.

        For a whole-input task, the compilation alone: its tile forward's first call less its second.
        (A whole image's call, many forwards and the blending, varies by more than a compile takes.)
        The first whole call follows, untimed."""
        if self.config.task not in WHOLE_INPUT_TASKS:
            return _seconds(self.call)
        compiling = _seconds(self.runner.infer) - _seconds(self.runner.infer)
        self.call()
        return compiling

    def time_calls(self, count: int) -> list[float]:
        """A plain perf_counter loop in this process: what the timer check compares with."""
        return [_seconds(self.call) for _ in range(count)]

    def write_initial_weights(self, file: str) -> None:
        """The canonical weights every worker of the sweep loads (torch workers only: it imports torch)."""
        from bench.runners.workload import initial_weights
        from impls import convert

        convert.save(file, initial_weights(self.config.spec), self.config.spec)  # atomic: later runs read it

    def handlers(self) -> dict[str, Any]:
        runner = self.runner
        return {
            "settings": lambda: {**runner.settings, "device_name": runner.device_name},
            "first_call": self.first_call,
            "call": self.call,
            "time_calls": self.time_calls,
            "train_step": runner.train_step,
            "infer": runner.infer,
            "outputs": self.outputs,
            "outputs_in": self.outputs_in,
            "upconv_forms": lambda: runner.upconv_forms(),  # torch and jax runners only
            "freezing_forms": lambda: runner.freezing_forms(),  # torch runners only
            "reset_state": runner.reset_state,
            "weights": runner.weights,
            "peak_memory_bytes": runner.peak_memory_bytes,
            "reset_peak_memory": runner.reset_peak_memory,
            "write_initial_weights": self.write_initial_weights,
            "modules": lambda: sorted({"torch", "jax"} & set(sys.modules)),
            "noop": lambda: None,
        }


def serve(connection, service: Service, rank: int) -> int:
    handlers = service.handlers()
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the controller is gone
            return 0
        command = message["command"]
        if command == "exit":
            return 0
        try:
            connection.send({"result": handlers[command](*message.get("args", ()))})
        except Exception as error:  # sent to the controller, which raises it with this rank's name
            traceback.print_exc()
            connection.send({"error": f"{type(error).__name__}: {error}"})


def _standalone(service: Service, options: dict, rank: int) -> int:
    for _ in range(2):
        service.runner.train_step()
    seconds = []
    for _ in range(options.get("steps", 20)):
        start = time.perf_counter()
        service.runner.train_step()
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        median = sorted(seconds)[len(seconds) // 2]
        summary = {
            "config": service.config.to_dict(),
            "step_seconds": seconds,
            "images_per_second": service.config.batch / median,
            "settings": service.runner.settings,
        }
        Path(options.get("out", "dp-run.json")).write_text(json.dumps(summary, indent=1))
        print(json.dumps({"images_per_second": summary["images_per_second"]}))
    return 0


def main(argv: list[str]) -> int:
    config, options = split_arguments(json.loads(argv[0]))
    rank = int(os.environ.get("RANK", os.environ.get("JAX_PROCESS_ID", 0)))
    if options.get("log_dir"):
        _redirect_output(Path(options["log_dir"]) / f"rank{rank}.log")
    if "address" in options:
        _die_with_parent()
    _set_environment(config, options.get("compile_cache"))
    if config.framework == "jax":
        _configure_jax(config, options.get("compile_cache"))
    from bench.runners import build, runner_module

    # The framework imported before the controller is reached: several workers started together
    # (a replicate's, bench/sweep/rounds.py) import side by side instead of one after another.
    runner_module(config)
    if "address" not in options:
        warm_up(config)
        return _standalone(Service(config, build(config, _placement(config))), options, rank)
    connection = Client(tuple(options["address"]), authkey=bytes.fromhex(options["authkey"]))
    connection.send({"rank": rank, "pid": os.getpid()})  # at once: the ranks build together
    try:  # a case that cannot be built is reported like a failed command
        warm_up(config)
        service = Service(config, build(config, _placement(config)))
    except Exception as error:
        traceback.print_exc()
        connection.send({"error": f"{type(error).__name__}: {error}"})
        return 1
    connection.send({"result": None})
    return serve(connection, service, rank)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter teardown: with torch._dynamo loaded it takes 0.7 s here, which every closed
    # worker made its sweep wait. What the worker writes is written; ProcessWorker.close ends any
    # process it started (inductor's compile workers).
    os._exit(code)
