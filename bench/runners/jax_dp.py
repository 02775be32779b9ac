"""Data-parallel placement for jax: the global batch sharded over a Mesh, parameters replicated.

One process per host drives all its devices (on a CPU, simulated ones:
``--xla_force_host_platform_device_count``); ``jax.distributed`` joins hosts.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bench.run_config import RunConfig

AXIS = "data"
SPECS = {"replicated": P(), "batched": P(AXIS)}


class MeshPlacement:
    """``config.devices`` devices of the config's kind in one Mesh along the batch."""

    def __init__(self, config: RunConfig) -> None:
        if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
            jax.distributed.initialize()  # coordinator, process count and id from the environment
        kind = "cpu" if config.device == "cpu" else "gpu"
        devices = jax.devices(kind)
        if len(devices) < config.devices:
            raise ValueError(f"{config.devices} devices asked for, {len(devices)} {kind} devices present")
        self.device = devices[0]
        self.mesh = Mesh(np.array(devices[: config.devices]), (AXIS,))
        self.replicated = NamedSharding(self.mesh, SPECS["replicated"])
        self.batched = NamedSharding(self.mesh, SPECS["batched"])
        self.sync_bn = config.sync_bn
        self.settings: dict[str, Any] = {
            "engine": f"jax.jit over a Mesh of {config.devices} devices, batch sharded with NamedSharding",
            "batchnorm": "global batch (GSPMD)"
            if self.sync_bn
            else "per device (shard_map; device 0's running statistics kept, as DDP's broadcast)",
        }

    def distribute(self, fn, in_specs: tuple, out_specs: tuple):
        """``fn`` over the global batch (cross-device BatchNorm), or per device under shard_map."""
        if self.sync_bn:  # XLA inserts the collectives BatchNorm's global statistics need
            return fn
        return jax.shard_map(
            functools.partial(fn, axis_name=AXIS),
            mesh=self.mesh,
            in_specs=tuple(SPECS[s] for s in in_specs),
            out_specs=tuple(SPECS[s] for s in out_specs),
        )
