"""A torch runner inside one DistributedDataParallel process (started by torchrun)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.runners.dp_worker import runner_arguments
from bench.runners.torch_runner import TorchRunner
from impls import convert


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


class TorchDDPRunner(TorchRunner):
    """This rank's share of a global batch, the model wrapped in DDP."""

    def __init__(self, config: dict) -> None:
        cuda = config["device"] != "cpu"
        dist.init_process_group("nccl" if cuda else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.sync_bn = config["sync_bn"]
        local = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local)
        device = f"cuda:{local}" if cuda else "cpu"
        super().__init__(config["path"], config["spec"], **runner_arguments(config, device=device))
        self.settings.update(
            engine=f"DistributedDataParallel over {self.world} processes ({'nccl' if cuda else 'gloo'})",
            batchnorm=self._batchnorm_setting,
        )

    def _shard(self, array: np.ndarray) -> np.ndarray:
        share = len(array) // dist.get_world_size()
        rank = dist.get_rank()
        return array[rank * share : (rank + 1) * share]

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.sync_bn:
            self._batchnorm_setting = "per device (DDP's default; rank 0's running statistics broadcast)"
        elif self.cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self._batchnorm_setting = "torch.nn.SyncBatchNorm"
        else:
            model = _all_reduce_batchnorm(model)
            self._batchnorm_setting = "global batch (AllReduceBatchNorm2d: SyncBatchNorm runs on GPUs only)"
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None)

    def probe(self) -> dict[str, dict[str, np.ndarray]]:
        """One eager step from the initial weights: DDP-averaged gradients, weights after Adam."""
        self._reset_state()
        self._mode(True)
        self._train_fn(self.images, self.labels, self.pixel_weights)
        grads = {name: p.grad.detach().cpu().numpy().copy() for name, p in self.model.named_parameters()}
        return {"gradients": grads, "weights": convert.from_torch(self.model)}
