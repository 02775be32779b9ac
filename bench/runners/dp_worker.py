"""A worker of a data-parallel run: builds its runner, then serves the controlling process.

Started by ``DistributedRunner`` (under torchrun for the torch paths, as one
process for jax), with a JSON config as its argument. Its output goes to
``rank<N>.log`` in the run's log folder. ``UNET_BENCH_FAULT`` (tests only),
"rank=R,command=C,action=exit|hang", makes rank R fail at command C.

Without a controller's ``address`` in the config it runs standalone, as on
several hosts under torchrun's rendezvous or ``jax.distributed``: two warm-up
steps, then ``steps`` timed ones, and rank 0 writes their seconds to ``out``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from multiprocessing.connection import Client
from pathlib import Path

from impls.spec import UNetSpec


def _redirect_output(log: Path) -> None:
    """Send this process's stdout and stderr, C libraries' included, to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for stream in (1, 2):
        os.dup2(fd, stream)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115


def _fault(rank: int) -> tuple[str | None, str | None]:
    fields = dict(
        item.split("=", 1) for item in os.environ.get("UNET_BENCH_FAULT", "").split(",") if "=" in item
    )
    if int(fields.get("rank", -1)) != rank:
        return None, None
    return fields.get("command"), fields.get("action")


# The entries of a worker's config that go to the single-device runner it extends.
RUNNER_ARGUMENTS = ("batch", "size", "precision", "device", "tf32", "upconv", "loss", "learning_rate")


def runner_arguments(config: dict, **overrides) -> dict:
    """The single-device runner's keyword arguments from ``config``, some replaced by ``overrides``."""
    return {**{name: config[name] for name in RUNNER_ARGUMENTS}, **overrides}


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    rank = int(os.environ.get("RANK", os.environ.get("JAX_PROCESS_ID", 0)))
    if "log_dir" in config:
        _redirect_output(Path(config["log_dir"]) / f"rank{rank}.log")
    config["spec"] = UNetSpec(**config["spec"])
    config.setdefault("tf32", False)
    config.setdefault("upconv", "auto")
    config.setdefault("loss", "ce")
    config.setdefault("learning_rate", 1e-4)
    config.setdefault("sync_bn", False)
    if config["path"] == "jax":
        if config["precision"] == "fp64":
            import jax

            jax.config.update("jax_enable_x64", True)
        from bench.runners.jax_dp import JaxDPRunner

        runner = JaxDPRunner(config)
    else:
        from bench.runners.torch_ddp import TorchDDPRunner

        runner = TorchDDPRunner(config)
    if "address" not in config:
        return _standalone(runner, config, rank)
    connection = Client(tuple(config["address"]), authkey=bytes.fromhex(config["authkey"]))
    connection.send({"rank": rank})
    fault_command, fault_action = _fault(rank)
    handlers = {
        "settings": lambda: runner.settings,
        "train_step": runner.train_step,
        "infer": runner.infer,
        "outputs": lambda: runner.outputs("infer")["logits"],
        "probe": runner.probe,
        "noop": lambda: None,
        "reset_compilation": runner.reset_compilation,
        "reset_peak_memory": runner.reset_peak_memory,
        "peak_memory_bytes": runner.peak_memory_bytes,
    }
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the controller is gone
            return 0
        command = message["command"]
        if command == "exit":
            return 0
        if command == fault_command:
            print(f"rank {rank}: injected fault {fault_action!r} at {command!r}", flush=True)
            if fault_action == "hang":
                time.sleep(10**6)
            os._exit(3)
        try:
            connection.send({"result": handlers[command]()})
        except Exception as error:  # reported to the controller, which raises it with this rank's name
            traceback.print_exc()
            connection.send({"error": f"{type(error).__name__}: {error}"})


def _standalone(runner, config: dict, rank: int) -> int:
    for _ in range(2):
        runner.train_step()
    seconds = []
    for _ in range(config.get("steps", 20)):
        start = time.perf_counter()
        runner.train_step()
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        median = sorted(seconds)[len(seconds) // 2]
        summary = {
            "config": {**config, "spec": json.loads(config["spec"].to_json())},
            "step_seconds": seconds,
            "images_per_second": config["batch"] / median,
            "settings": runner.settings,
        }
        Path(config.get("out", "dp-run.json")).write_text(json.dumps(summary, indent=1))
        print(json.dumps({k: summary[k] for k in ("images_per_second",)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
