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

# fp32 agreement bound, and the floor of every bound: a lower-precision
# allowance can be looser than fp32's, never tighter.
FP32_TOLERANCE = 1e-4
LOW_PRECISION_FACTOR = 2.0


def err(a: np.ndarray, ref: np.ndarray, scale: float | None = None) -> float:
    """max|a - ref| / max|ref| (or / scale), the project's one measure of difference."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / (np.max(np.abs(ref)) if scale is None else scale))


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


def _errors(outputs: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """One error per output: logits, loss, gradients."""
    errors = {}
    for name, ref in reference.items():
        if name == "gradients":
            errors[name] = gradient_error(outputs[name], ref)
            continue
        if outputs[name].shape != ref.shape:
            raise ValueError(f"parity gate: {name} has shape {outputs[name].shape}, reference {ref.shape}")
        errors[name] = err(outputs[name], ref)
    return errors


def check(
    outputs: Mapping[str, Any],
    reference: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
) -> GateResult:
    """Compare a path's outputs with torch eager fp32 (TF32 off).

    ``baseline``: torch eager's own outputs in the case's lower precision (bf16
    or TF32), whose error against ``reference`` sets the allowance: at most
    twice it. None for plain fp32, where the bound is FP32_TOLERANCE.

    The training losses are compared in fp32 only: in lower precision a loss's
    error is a single sample of rounding noise, too erratic to bound by twice
    another single sample; the logits and gradients bound the forward and the
    backward there.
    """
    compared = {n: v for n, v in reference.items() if baseline is None or n != "loss"}
    errors = _errors(outputs, compared)
    allowed = dict.fromkeys(errors, FP32_TOLERANCE)
    if baseline is not None:
        own = _errors(baseline, compared)
        allowed = {n: max(LOW_PRECISION_FACTOR * own[n], FP32_TOLERANCE) for n in errors}
    return GateResult(errors, allowed)
