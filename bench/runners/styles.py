"""What a path chooses around the shared model, and where it runs, in every framework alike.

No framework here: each runner reads the style and the placement in its own terms (torch's fused
Adam and cuDNN autotuner, JAX's donation and Flax's layers); the data-parallel placements are
bench/runners/torch_ddp.py and bench/runners/jax_dp.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.run_config import PLAIN_PATHS, RunConfig


@dataclass(frozen=True)
class Style:
    """The project's tuned choices, or the plain ones: the framework's defaults, as its tutorials
    write the model (native up-conv, contiguous NCHW)."""

    plain: bool
    description: str
    upconv: str  # a form, or "auto": the faster, measured
    memory_format: str  # torch's layout, likewise; JAX leaves layouts to XLA


def style(config: RunConfig, plain: str, tuned: str) -> Style:
    """The path's style: plain for the plain paths, else the tuned one with the case's choices;
    ``plain`` and ``tuned`` describe each as the framework makes it."""
    if config.path in PLAIN_PATHS:
        return Style(True, plain, "native", "contiguous")
    return Style(False, tuned, config.upconv, config.memory_format)


class SingleDevice:
    """Placement on one device, in either framework: the batch whole, the model and every value as
    they are, every choice this process's own."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.replicated = self.batched = device  # where the state and the batch are put: that device
        self.settings: dict[str, Any] = {}

    def shard(self, array: Any) -> Any:
        """This process's rows of the batch: all of them."""
        return array

    def wrap(self, model: Any) -> Any:
        return model

    def agree(self, choice: str) -> str:
        """One choice for every process of the placement: this one's."""
        return choice

    def mean(self, value: Any) -> Any:
        """``value``'s mean over the placement's processes (the global batch's loss): itself."""
        return value

    def distribute(self, fn: Any, in_specs: tuple, out_specs: tuple) -> Any:
        """``fn`` as it runs over the placement's devices: as it is, on one."""
        return fn
