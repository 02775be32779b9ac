"""The parity gate: a path gets a number only if it computes what torch eager fp32 computes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# fp32 agreement bound, and the floor of every bound: a lower-precision
# allowance can be looser than fp32's, never tighter.
FP32_TOLERANCE = 1e-4
LOW_PRECISION_FACTOR = 2.0


def err(a: np.ndarray, ref: np.ndarray) -> float:
    """max|a - ref| / max|ref|, the project's one measure of difference."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


@dataclass(frozen=True)
class GateResult:
    errors: dict[str, float]
    allowed: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(self.errors[k] <= self.allowed[k] for k in self.errors)

    def describe(self) -> str:
        return ", ".join(f"{k} err {self.errors[k]:.2e} (allowed {self.allowed[k]:.2e})" for k in self.errors)


def check(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray] | None = None,
) -> GateResult:
    """Compare a path's outputs with torch eager fp32 (TF32 off).

    ``baseline``: torch eager's own outputs in the case's lower precision (bf16
    or TF32), whose error against ``reference`` sets the allowance: at most
    twice it. None for plain fp32, where the bound is FP32_TOLERANCE.

    The training losses are compared in fp32 only: in lower precision a loss's
    error is a single sample of rounding noise, too erratic to bound by twice
    another single sample, and the logits tensor already bounds the forward.
    """
    names = [n for n in reference if baseline is None or n != "loss"]
    errors, allowed = {}, {}
    for name in names:
        ref = reference[name]
        if outputs[name].shape != ref.shape:
            raise ValueError(f"parity gate: {name} has shape {outputs[name].shape}, reference {ref.shape}")
        errors[name] = err(outputs[name], ref)
        allowed[name] = FP32_TOLERANCE
        if baseline is not None:
            allowed[name] = max(LOW_PRECISION_FACTOR * err(baseline[name], ref), FP32_TOLERANCE)
    return GateResult(errors, allowed)
