"""The JAX runner over several devices: the global batch sharded over a Mesh, parameters replicated."""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bench.runners.dp_worker import runner_arguments
from bench.runners.jax_runner import JaxRunner, gradients, train_step
from impls import convert

AXIS = "data"
REPLICATED, BATCHED = P(), P(AXIS)


class JaxDPRunner(JaxRunner):
    """One process per host driving all its devices; ``jax.distributed`` joins several hosts."""

    def __init__(self, config: dict) -> None:
        if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
            jax.distributed.initialize()  # coordinator, process count and id from the environment
        self.devices, self.sync_bn = config["devices"], config["sync_bn"]
        super().__init__(config["spec"], **runner_arguments(config))
        self.settings.update(
            engine=f"jax.jit over a Mesh of {self.devices} devices, batch sharded with NamedSharding",
            batchnorm="global batch (GSPMD)"
            if self.sync_bn
            else "per device (shard_map; device 0's running statistics kept, as DDP's broadcast)",
        )

    def _place_on_devices(self) -> None:
        kind = "gpu" if self.cuda else "cpu"
        devices = jax.devices(kind)
        if len(devices) < self.devices:
            raise ValueError(f"{self.devices} devices asked for, {len(devices)} {kind} devices present")
        self.mesh = Mesh(np.array(devices[: self.devices]), (AXIS,))
        self._replicated = NamedSharding(self.mesh, REPLICATED)
        self._batched = NamedSharding(self.mesh, BATCHED)

    def _distribute(self, fn, in_specs: tuple, out_specs: tuple):
        """``fn`` over the global batch (cross-device BatchNorm), or per device under shard_map."""
        if self.sync_bn:  # XLA inserts the collectives BatchNorm's global statistics need
            return fn
        return jax.shard_map(
            functools.partial(fn, axis_name=AXIS), mesh=self.mesh, in_specs=in_specs, out_specs=out_specs
        )

    def _step_function(self):
        return self._distribute(
            functools.partial(train_step, self._train_def, self._optimizer),
            in_specs=(REPLICATED,) * 3 + (BATCHED,) * 3,
            out_specs=(REPLICATED,) * 4 + (BATCHED,),
        )

    def probe(self) -> dict[str, dict[str, np.ndarray]]:
        """One step from the initial weights: the averaged gradients, and the weights after Adam."""
        self._reset_state()
        grad_fn = jax.jit(
            self._distribute(
                functools.partial(gradients, self._train_def),
                in_specs=(REPLICATED,) * 2 + (BATCHED,) * 3,
                out_specs=(REPLICATED, BATCHED, REPLICATED, REPLICATED),
            )
        )
        with jax.default_matmul_precision(self.matmul_precision):
            grads = grad_fn(self.params, self.stats, self.images, self.labels, self.pixel_weights)[2]
        self._run_train(self.images, self.labels, self.pixel_weights)
        return {
            "gradients": convert.from_flax_state(grads, self.spec),
            "weights": convert.from_flax(nnx.merge(self._train_def, self.params, self.stats)),
        }
