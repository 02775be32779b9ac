"""The parity gate: a path gets a number only if it computes what torch eager fp32 computes.

It compares the forward (logits) and, for training, the backward (every
parameter's gradient in the first step) and the update (the loss of the
second step, which the first step's Adam update decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from impls.checks import err

# The floor of every bound: an allowance can be looser, never tighter.
FP32_TOLERANCE = 1e-4
NOISE_FACTOR = 2.0


def gradient_error(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """err of the whole gradient, every parameter's in one vector.

    Not tensor by tensor: in a small tensor (a BatchNorm weight of a few
    channels) one pixel whose ReLU input lies within rounding of 0, and so
    falls on the other side in another framework's float32, moves the
    gradient by up to 0.5% (seen at width 4, 32 px: 5.2e-3 for
    torch-compile against eager, while jax agreed to 4e-6); over the whole
    gradient the same pixel weighs 2e-4, and at width 8 under 2e-6.
    """
    if sorted(got) != sorted(ref):
        raise ValueError(f"parity gate: gradients of different parameters: {sorted(set(got) ^ set(ref))}")
    return err(*(np.concatenate([d[n].ravel() for n in sorted(ref)]) for d in (got, ref)))


@dataclass(frozen=True)
class GateResult:
    errors: dict[str, float]
    allowed: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(self.errors[k] <= self.allowed[k] for k in self.errors)

    def describe(self) -> str:
        return ", ".join(f"{k} err {self.errors[k]:.2e} (allowed {self.allowed[k]:.2e})" for k in self.errors)


def errors(outputs: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """One error per output of ``reference``: logits, loss, gradients."""
    found = {}
    for name, ref in reference.items():
        if name == "gradients":
            found[name] = gradient_error(outputs[name], ref)
            continue
        if outputs[name].shape != ref.shape:
            raise ValueError(f"parity gate: {name} has shape {outputs[name].shape}, reference {ref.shape}")
        found[name] = err(outputs[name], ref)
    return found


def noise(own: Mapping[str, Any], exact: Mapping[str, Any], low_precision: bool) -> dict[str, float]:
    """torch eager's own error in the case's precision: its outputs ``own`` against ``exact``.

    fp32: torch eager fp32 against torch eager fp64. A gradient near a ReLU
    kink, or through BatchNorm over a few pixels (batch 1 at 64 px leaves 16
    per channel at the bottleneck), is this sensitive to rounding in any
    fp32 implementation (seen: 4.9e-4 for jax at 64 px, batch 1). bf16 or
    TF32: torch eager in that precision against torch eager fp32. The losses
    are compared in fp32 only: in lower precision a loss's error is a single
    sample of rounding noise, too erratic to bound by twice another single
    sample; the logits and gradients bound the forward and the backward there.
    """
    names = [n for n in exact if not (low_precision and n == "loss")]
    return errors(own, {n: exact[n] for n in names})


def check(
    outputs: Mapping[str, Any], reference: Mapping[str, Any], own_noise: Mapping[str, float]
) -> GateResult:
    """Compare a path's outputs with torch eager fp32 (TF32 off), ``reference``.

    Each output may differ by FP32_TOLERANCE, or by up to NOISE_FACTOR times
    torch eager's own error in the case's precision (``noise``) where that is
    larger: a path that computes the same function as accurately as torch
    eager lies within twice that of torch eager.
    """
    found = errors(outputs, {n: reference[n] for n in own_noise})
    allowed = {n: max(NOISE_FACTOR * own_noise[n], FP32_TOLERANCE) for n in found}
    return GateResult(found, allowed)
