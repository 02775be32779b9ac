"""The parity gate: a path gets a number only if it computes what torch eager fp32 computes.

Tensor by tensor, each against its own scale: the logits, and for training the
loss of two steps, every parameter's gradient in the first step (the backward),
every running statistic after the two steps (BatchNorm's updates) and every
parameter after them against Adam's steps on the path's own gradients. One
error over the whole gradient let wrong functions through: with 99.5% of a bf16
gradient zeroed, or the bottleneck's gradients (46% of the parameters) zeroed in
fp32, it stayed within its allowance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.run_config import ADAM_BETAS, ADAM_EPS
from impls.spec import UNetSpec

# The floor of every allowance: an allowance can be looser, never tighter.
FP32_TOLERANCE = 1e-4
NOISE_FACTOR = 2.0
# Inputs torch eager's own error is measured on: the largest of its errors on these bounds each
# tensor's, since a single input's error is one sample of rounding noise (often an erratic one:
# a ReLU input within rounding of 0 switches one pixel's gradient on or off).
NOISE_SEEDS = (0, 1, 2)


def block_relative(spec: UNetSpec) -> set[str]:
    """Canonical names measured against their block's largest value, not their own: the biases
    whose true gradient is 0 (their gradient is rounding noise, ``UNetSpec.zero_gradient_biases``)
    and the running means that follow them (Adam moves such a bias by about its learning rate,
    in a direction set by that noise)."""
    biases = spec.zero_gradient_biases()
    means = set()
    for name in biases:
        block, layer, _ = name.split(".")
        norm = "norm1" if layer == "upconv" else layer.replace("conv", "norm")
        means.add(f"{block}.{norm}.running_mean")
    return biases | means


def flatten(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A runner's outputs as one tensor per name: "logits", "loss", "gradients/<parameter>",
    "second_gradients/<parameter>", "weights/<parameter or statistic>"."""
    flat: dict[str, np.ndarray] = {}
    for kind, value in outputs.items():
        if isinstance(value, Mapping):
            flat |= {f"{kind}/{name}": np.asarray(v) for name, v in value.items()}
        else:
            flat[kind] = np.asarray(value)
    return flat


def _against_reference(name: str) -> bool:
    """Compared with torch eager's: the logits, the losses, the first step's gradients and the
    running statistics after the steps. Not the parameters after the steps: Adam's first steps move
    each by about its learning rate in the direction of its gradient's sign, and where a gradient
    element is within rounding of 0 (many are, in bf16) that sign is a coin toss in each framework;
    they are checked against Adam applied to the path's own gradients instead (``adam_errors``).
    Nor the second step's gradients, which follow from those parameters."""
    kind, _, canonical = name.partition("/")
    return kind in ("logits", "loss", "gradients") or "running_" in canonical


def difference(got: np.ndarray, ref: np.ndarray, scale: float) -> float:
    """||got - ref|| / ``scale`` (Frobenius norms): the gate's measure. Not the largest element's
    difference (impls.checks.err): one pixel on the other side of a ReLU kink moves a few elements
    of a gradient by percents in any correct fp32 implementation, and in bf16 a gradient's largest
    element differs from fp32's by up to 55% of the tensor's largest (at 128 px, width 64, the
    bottleneck's), so that a zeroed gradient (difference 1) was within twice torch eager's own."""
    gap = float(np.linalg.norm(np.asarray(got, np.float64) - np.asarray(ref, np.float64)))
    return gap / scale if scale > 0 else (0.0 if gap == 0 else float("inf"))


def scales(reference: Mapping[str, np.ndarray], spec: UNetSpec) -> dict[str, float]:
    """Each tensor's scale: its own norm, or its block's (``block_relative``), the block's
    parameters and its statistics apart."""
    relative = block_relative(spec)

    def block(name: str) -> tuple[str, str, bool] | None:
        kind, _, canonical = name.partition("/")
        return (kind, canonical.split(".")[0], "running_" in canonical) if canonical else None

    squares: dict[Any, float] = {}
    for name, value in reference.items():
        squares[block(name)] = squares.get(block(name), 0.0) + float(
            np.sum(np.square(value, dtype=np.float64))
        )
    own = {name: float(np.linalg.norm(np.asarray(value, np.float64))) for name, value in reference.items()}
    return {
        name: np.sqrt(squares[block(name)]) if name.partition("/")[2] in relative else own[name]
        for name in own
    }


@dataclass(frozen=True)
class Start:
    """Where a case's two training steps start: the canonical weights and Adam's learning rate
    (its betas and eps: bench/run_config.py's, every framework's defaults)."""

    weights: Mapping[str, np.ndarray]
    learning_rate: float


def adam_steps(start: Start, gradients: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parameters after Adam's steps on ``gradients`` from ``start``, as torch.optim.Adam and
    optax.adam compute them (in float64, each step's result rounded to the weights' dtype)."""
    (b1, b2), eps = ADAM_BETAS, ADAM_EPS
    after = {}
    for name in gradients[0]:
        weight = np.asarray(start.weights[name], np.float64)
        first = second = np.zeros_like(weight)
        for step, grads in enumerate(gradients, 1):
            g = np.asarray(grads[name], np.float64)
            first, second = b1 * first + (1 - b1) * g, b2 * second + (1 - b2) * g * g
            denominator = np.sqrt(second / (1 - b2**step)) + eps
            # rounded to the weights' own dtype after each step, as the path's weights are
            weight = weight - start.learning_rate / (1 - b1**step) * first / denominator
            weight = weight.astype(start.weights[name].dtype).astype(np.float64)
        after[name] = weight
    return after


def adam_errors(outputs: Mapping[str, Any], start: Start) -> dict[str, float]:
    """ "adam/<parameter>": how far a path's parameters after its two steps are from Adam's steps
    on its own gradients, against their own scale (a wrong update, such as Adam without its bias
    correction, moves them by more than their steps' size: 1.5e-3 of a 3x3 kernel's norm at 8
    input channels, 1e-4 of a BatchNorm weight's; float32's resolution is 6e-8)."""
    expected = adam_steps(start, [outputs["gradients"], outputs["second_gradients"]])
    after = outputs["weights"]
    return {
        f"adam/{name}": difference(after[name], value, float(np.linalg.norm(value)))
        for name, value in expected.items()
    }


def errors(
    outputs: Mapping[str, Any], reference: Mapping[str, Any], spec: UNetSpec, start: Start
) -> dict[str, float]:
    """The difference of each tensor of ``outputs`` (nested as a runner returns it) from
    ``reference``'s, against the reference's scale, and for training ``adam_errors``."""
    got, want = flatten(outputs), {n: v for n, v in flatten(reference).items() if _against_reference(n)}
    missing = sorted(set(want) - set(got))
    if missing:
        raise ValueError(f"parity gate: the outputs lack {len(missing)} tensors, as {missing[:3]}")
    for name, value in want.items():
        if got[name].shape != value.shape:
            raise ValueError(f"parity gate: {name} has shape {got[name].shape}, reference {value.shape}")
    scale = scales(want, spec)
    found = {name: difference(got[name], want[name], scale[name]) for name in want}
    return found | (adam_errors(outputs, start) if "second_gradients" in reference else {})


@dataclass(frozen=True)
class GateResult:
    errors: dict[str, float]
    allowed: dict[str, float]

    @property
    def failed(self) -> list[str]:
        """The tensors beyond their allowance, the furthest (as a multiple of it) first."""
        over = [n for n in self.errors if not self.errors[n] <= self.allowed[n]]
        return sorted(over, key=lambda n: -self.errors[n] / self.allowed[n])

    @property
    def passed(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        """The failures (five at most), or the tensor nearest its allowance."""
        if self.failed:
            names, head = self.failed[:5], f"{len(self.failed)} of {len(self.errors)} tensors differ: "
        else:
            names = [max(self.errors, key=lambda n: self.errors[n] / self.allowed[n])]
            head = f"{len(self.errors)} tensors within their allowances, the nearest: "
        return head + ", ".join(
            f"{n} err {self.errors[n]:.2e} (allowed {self.allowed[n]:.2e})" for n in names
        )


def noise(
    pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], spec: UNetSpec, start: Start
) -> dict[str, float]:
    """torch eager's own error in the case's precision, per tensor: the largest over ``pairs`` of
    its outputs and their exact twins (one pair per input of NOISE_SEEDS and memory format).

    fp32: torch eager fp32 against torch eager fp64. A gradient near a ReLU kink, or through
    BatchNorm over a few pixels (batch 2 at 128 px, depth 4, leaves 128 per channel at the
    bottleneck), is this sensitive to rounding in any fp32 implementation: there its gradient
    differs from fp64's by a few percent. bf16 or TF32: torch eager in that precision against
    torch eager fp32.
    """
    found: dict[str, float] = {}
    for own, exact in pairs:
        for name, value in errors(own, exact, spec, start).items():
            found[name] = max(found.get(name, 0.0), value)
    return found


def check(
    outputs: Mapping[str, Any],
    reference: Mapping[str, Any],
    own_noise: Mapping[str, float],
    spec: UNetSpec,
    start: Start,
) -> GateResult:
    """Compare a path's outputs with torch eager fp32 (TF32 off), ``reference``, tensor by tensor.

    Each may differ by FP32_TOLERANCE, or by up to NOISE_FACTOR times torch eager's own error on
    it in the case's precision (``noise``) where that is larger: a path that computes the same
    function as accurately as torch eager lies within twice that of torch eager.
    """
    found = errors(outputs, reference, spec, start)
    allowed = {n: max(NOISE_FACTOR * own_noise[n], FP32_TOLERANCE) for n in found}
    return GateResult(found, allowed)
