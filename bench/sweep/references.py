"""torch eager's reference outputs, the canonical weights file, and the parity gate's call.

A spec's canonical weights file and its references are kept in the compile-cache folder between
runs (keyed by versions, code and spec: bench/keys.py), each file sealed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import environment, gate, keys
from bench.run_config import RunConfig
from bench.sweep.kept_files import KeptFiles
from bench.sweep.worker import StartWorker, Worker
from impls import convert
from impls.files import atomic_output, seal

# The reference's own memory format first: its outputs are the reference; the other's error counts too.
REFERENCE_FORMATS = ("contiguous", "channels_last")


def save_reference(file: Path, reference: dict[str, Any], own_noise: dict[str, float]) -> None:
    """torch eager's reference outputs (and its own error) for a later run on the same key."""
    arrays = {}
    for kind, value in reference.items():  # "gradients" and "weights" hold a tensor per name
        arrays |= {f"{kind}/{n}": v for n, v in value.items()} if isinstance(value, dict) else {kind: value}
    # A file object: given a path, np.savez would add ".npz" to the temporary file's name.
    with atomic_output(file, what="reference") as temporary, temporary.open("wb") as handle:
        np.savez(handle, own_noise=json.dumps(own_noise), **arrays)
    seal(file)


def load_reference(file: Path) -> tuple[dict[str, Any], dict[str, float]]:
    reference: dict[str, Any] = {}
    with np.load(file) as saved:
        for name in saved.files:
            kind, _, tensor = name.partition("/")
            if tensor:
                reference.setdefault(kind, {})[tensor] = saved[name]
            elif name != "own_noise":
                reference[name] = saved[name]
        own_noise = json.loads(str(saved["own_noise"]))
    return reference, own_noise


@dataclass
class References:
    """The references of a run's cases, computed once per key (or read from an earlier run's)."""

    compile_cache: Path
    files: KeptFiles
    start_worker: StartWorker
    _references: dict[str, tuple] = field(default_factory=dict)
    _starts: dict[Path, gate.Start] = field(default_factory=dict)

    def weights_file(self, config: RunConfig) -> Path:
        """Where a spec's canonical weights file and its references are kept between runs: they are
        a function of the versions, the code (impls/, bench/runners/, bench/cells.py) and the spec."""
        folder = self.compile_cache / "references" / keys.reference_folder_key(config.spec)
        return folder / "weights.safetensors"

    def reference(self, config: RunConfig, deadline: float) -> tuple[dict, dict[str, float]]:
        """torch eager fp32 (TF32 off) outputs on the timed batch, and torch eager's own error per
        tensor in the case's precision (bench/gate.py): against fp64 for fp32, against fp32 for bf16
        or TF32; the largest of its errors on the inputs of gate.NOISE_SEEDS, in each memory format
        torch eager may run in, since either is torch eager.

        The first reference worker of a spec writes the canonical weights file every worker loads.
        """
        tf32 = config.tf32 and config.device != "cpu"
        low_precision = config.precision == "bf16" or tf32
        # A data-parallel run's training against torch eager's over as many devices (DDP's
        # BatchNorm, per device unless --sync-bn, is another function than one device's); its
        # forward against one device's, which it equals.
        parallel = config.task == "train" and config.devices is not None
        reference_config = config.replace(
            path="torch-eager",
            devices=config.devices if parallel else None,
            sync_bn=config.sync_bn and parallel,
            scaling=None,
            upconv="native",
            memory_format="contiguous",
            weights_file=None,
        )
        key = reference_config.replace(precision=config.precision if low_precision else "fp32").to_json()
        weights = self.weights_file(config)
        name = keys.reference_file_key(
            key, environment.device_name(config.device), REFERENCE_FORMATS, gate.NOISE_SEEDS
        )
        saved = weights.parent / f"{name}.npz"
        if key not in self._references and self.files.whole(weights) and self.files.whole(saved):
            self._references[key] = load_reference(saved)
        if key not in self._references:
            weights.parent.mkdir(parents=True, exist_ok=True)
            pairs = self._eager_pairs(reference_config, weights, deadline)
            reference = pairs[0][1] if low_precision else pairs[0][0]  # fp32, contiguous, the timed batch
            self._references[key] = (reference, gate.noise(pairs, config.spec, self._start(config)))
            save_reference(saved, *self._references[key])
        return self._references[key]

    def check(self, config: RunConfig, worker: Worker, deadline: float) -> gate.GateResult:
        """The worker's outputs against the reference, within the gate's allowances."""
        reference, own_noise = self.reference(config, deadline)
        return gate.check(worker.outputs(config.task), reference, own_noise, config.spec, self._start(config))

    def _start(self, config: RunConfig) -> gate.Start:
        """The weights and learning rate the gated training steps start from."""
        file = self.weights_file(config)
        if file not in self._starts:
            self._starts[file] = gate.Start(convert.load(file)[0], config.learning_rate)
        return self._starts[file]

    def _eager_pairs(self, config: RunConfig, weights: Path, deadline: float) -> list[tuple[dict, dict]]:
        """torch eager's outputs in the case's precision beside their exact twins, on the batch of
        each of gate.NOISE_SEEDS (the timed one first), in each of REFERENCE_FORMATS in turn: fp32
        beside fp64, bf16 or TF32 beside fp32. One worker computes them all, but TF32's, which is
        process-wide: a second worker."""
        task = config.task
        tf32 = config.tf32 and config.device != "cpu"

        def outputs(worker: Worker, precision: str) -> list[dict]:
            return [
                worker.outputs_in(precision, task, seed, memory_format)
                for memory_format in REFERENCE_FORMATS
                for seed in gate.NOISE_SEEDS
            ]

        exact_config = config.replace(precision="fp32", tf32=False, memory_format=REFERENCE_FORMATS[0])
        with self.start_worker(exact_config, deadline=deadline) as worker:
            if not self.files.whole(weights):
                worker.call("write_initial_weights", str(weights))
                seal(weights)
            fp32 = outputs(worker, "fp32")
            if config.precision != "bf16" and not tf32:
                return list(zip(fp32, outputs(worker, "fp64"), strict=True))
            if not tf32:
                return list(zip(outputs(worker, "bf16"), fp32, strict=True))
        own_config = config.replace(weights_file=str(weights), memory_format=REFERENCE_FORMATS[0])
        with self.start_worker(own_config, deadline=deadline) as worker:
            return list(zip(outputs(worker, config.precision), fp32, strict=True))
