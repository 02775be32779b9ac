"""Data-parallel training equals the single-device computation, on CPU, in both frameworks.

torch: DistributedDataParallel over 2 gloo processes (torchrun); jax: a Mesh of
2 simulated host devices. In float64, so that per-weight agreement after an
Adam step is meaningful (see the core parity tests), to the core bound 1e-8:

- with per-device BatchNorm statistics (the default): as the per-device
  computation done by hand, each half of the batch through its own forward
  and backward, gradients averaged (device 0's running statistics kept);
- with cross-device statistics: as one device on the whole batch.

Also: a worker that dies or hangs is reported, naming its rank, within bounded time.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench.runners import LEARNING_RATE, RunConfig
from bench.runners.workload import batch, initial_weights
from bench.sweep import Sweep, leftover_processes
from bench.sweep.process_worker import ProcessWorker
from bench.sweep.worker import WorkerError
from impls import convert, torch_unet
from impls.spec import UNetSpec
from tests import faults
from tests.fakes import FakeBenchmark
from tests.helpers import assert_close

SPEC = UNetSpec(width=4, depth=2)
BATCH, SIZE, DEVICES = 4, 16, 2


def _model() -> torch.nn.Module:
    weights = {k: v.astype(np.float64) for k, v in initial_weights(SPEC).items()}
    return convert.to_torch(weights, torch_unet.build(SPEC, torch.float64)).train()


def _grads(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    model.zero_grad()
    logits = model(torch.from_numpy(images.astype(np.float64)))
    torch_unet.weighted_cross_entropy(logits, torch.from_numpy(labels.astype(np.int64))).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def reference(sync_bn: bool) -> dict[str, dict[str, np.ndarray]]:
    """One Adam step by hand on one device: the whole batch, or each device's half."""
    images, labels, _ = batch(SPEC, BATCH, SIZE)
    model = _model()
    if sync_bn:
        grads = _grads(model, images, labels)
    else:
        share = BATCH // DEVICES
        halves = [slice(r * share, (r + 1) * share) for r in range(DEVICES)]
        # device 0 is `model` (its running statistics are the ones kept); the others are copies
        per_device = [
            _grads(model if r == 0 else copy.deepcopy(_model()), images[h], labels[h])
            for r, h in enumerate(halves)
        ]
        grads = {n: sum(g[n] for g in per_device) / DEVICES for n in per_device[0]}
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for name, parameter in model.named_parameters():
        parameter.grad = grads[name]
    optimizer.step()
    return {
        "gradients": {n: g.numpy() for n, g in grads.items()},
        "weights": convert.from_torch(model),
    }


def _config(path: str, **changes) -> RunConfig:
    return RunConfig(path, SPEC, SIZE, BATCH, devices=DEVICES, **changes)


@pytest.mark.parametrize("sync_bn", [False, True], ids=["per-device-bn", "cross-device-bn"])
@pytest.mark.parametrize("path", ["torch-eager", "jax"])
def test_data_parallel_step_equals_the_single_device_computation(path: str, sync_bn: bool) -> None:
    with ProcessWorker(_config(path, precision="fp64", sync_bn=sync_bn), call_timeout=120) as worker:
        gradients = worker.outputs("train")["gradients"]  # the first step's, averaged over the devices
        worker.reset_state()
        worker.train_step()
        got = {"gradients": gradients, "weights": worker.weights()}
        assert "per device" in worker.settings["batchnorm"] or sync_bn
    want = reference(sync_bn)
    assert_close(got["gradients"], want["gradients"], 1e-8, SPEC, f"{path} gradients")
    assert_close(got["weights"], want["weights"], 1e-8, SPEC, f"{path} weights and running statistics")
    # the comparison can fail: per-device and global statistics give different gradients
    other = reference(not sync_bn)["gradients"]["down0.conv1.weight"]
    assert np.abs(got["gradients"]["down0.conv1.weight"] - other).max() > 1e-6


@pytest.mark.parametrize(
    ("action", "status", "match"),
    [
        ("exit", "crashed", "rank 1 died during 'train_step'"),
        ("hang", "timeout", r"ranks? (0, )?1 did not answer 'train_step' within 5 s"),
    ],
)
def test_a_failing_rank_is_named_and_nothing_is_left_running(monkeypatch, action, status, match) -> None:
    faults.inject(monkeypatch, f"rank=1,command=train_step,action={action}")
    worker = ProcessWorker(_config("torch-eager"), call_timeout=5)
    try:
        with pytest.raises(WorkerError, match=match) as info:
            worker.train_step()
        assert info.value.status == status
        assert "rank 1: injected fault" in str(info.value)  # the end of rank 1's log is quoted
    finally:
        worker.close()
    # torchrun starts its ranks in sessions of their own: all of them are gone all the same
    assert leftover_processes() == []


def test_standalone_workers_under_torchrun(tmp_path) -> None:
    """How a multi-host run starts its workers (torchrun's rendezvous), here on one host."""
    config = {
        "path": "torch-eager",
        "spec": json.loads(SPEC.to_json()),
        "batch": BATCH,
        "size": SIZE,
        "precision": "fp32",
        "device": "cpu",
        "devices": DEVICES,
        "steps": 3,
        "out": str(tmp_path / "run.json"),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={DEVICES}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        "-m",
        "bench.runners.worker",
        json.dumps(config),
    ]
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    summary = json.loads((tmp_path / "run.json").read_text())
    assert len(summary["step_seconds"]) == 3 and summary["images_per_second"] > 0
    assert "DistributedDataParallel over 2 processes (gloo)" in summary["settings"]["engine"]


@pytest.mark.parametrize("path", ["torch-eager", "jax"])
def test_data_parallel_training_passes_the_gate_on_its_backward(tmp_path, path: str) -> None:
    """A data-parallel training case against torch eager's DDP training (per-device BatchNorm):
    its gradients, running statistics and Adam's steps, not only its forward."""
    sweep = Sweep(compile_cache=tmp_path, timing=False, announce=lambda line: None)
    sweep.cases = [_config(path, task="train")]
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    assert record["status"] == "ok"
    compared = {name.partition("/")[0] for name in record["parity"]["errors"]}
    assert compared == {"logits", "loss", "gradients", "weights", "adam"}
    assert leftover_processes() == []
