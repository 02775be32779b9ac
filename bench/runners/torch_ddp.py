"""Data-parallel placement for torch: this process's share of the global batch, the model in DDP.

Used by a worker started under torchrun (bench/runners/worker.py): one
process per device, NCCL on GPUs, gloo on a CPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.run_config import RunConfig


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch from torch.distributed's differentiable all_reduce.

    torch.nn.SyncBatchNorm computes the same but runs on GPUs only; this
    stands in for it on CPUs (gloo), where the equivalence tests run.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype)
        dist.all_reduce(count)
        mean = dist_fn.all_reduce(x.sum((0, 2, 3))) / count
        centred = x - mean[None, :, None, None]
        var = dist_fn.all_reduce(centred.square().sum((0, 2, 3))) / count
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        scale = self.weight / torch.sqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def _all_reduce_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            replacement = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement.to(child.weight.device, child.weight.dtype))
        else:
            _all_reduce_batchnorm(child)
    return module


class DataParallel:
    """Placement over the processes of a torchrun launch: rows of the batch by rank, DDP."""

    def __init__(self, config: RunConfig) -> None:
        self.cuda = config.device != "cpu"
        dist.init_process_group("nccl" if self.cuda else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        if self.cuda:
            torch.cuda.set_device(local)
        self.device = torch.device(f"cuda:{local}" if self.cuda else "cpu")
        self.sync_bn = config.sync_bn
        backend = "nccl" if self.cuda else "gloo"
        self.settings: dict[str, Any] = {
            "engine": f"DistributedDataParallel over {self.world} processes ({backend})"
        }

    def shard(self, array: np.ndarray) -> np.ndarray:
        share = len(array) // self.world
        return array[self.rank * share : (self.rank + 1) * share]

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.sync_bn:
            batchnorm = "per device (DDP's default; rank 0's running statistics broadcast)"
        elif self.cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            batchnorm = "torch.nn.SyncBatchNorm"
        else:
            model = _all_reduce_batchnorm(model)
            batchnorm = "global batch (AllReduceBatchNorm2d: SyncBatchNorm runs on GPUs only)"
        self.settings["batchnorm"] = batchnorm
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value``'s mean over the ranks: a loss of the global batch, as DDP's gradients are."""
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world

    def agree(self, choice: str) -> str:
        """Rank 0's choice, for every rank: their timings may differ, their models may not."""
        chosen = [choice]
        dist.broadcast_object_list(chosen, src=0)
        return chosen[0]
