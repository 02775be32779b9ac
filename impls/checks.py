"""Checks shared by impls/: a value that the code would silently misread is refused, and the
project's one measure of difference between two results.

Each message names the argument, the value given and what is allowed. Imports no framework.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np


def whole(name: str, value: object, least: int | None = 1) -> int:
    """``value`` as an int, refused unless an integer (>= ``least`` unless None): a float would be
    truncated and a bool read as 0 or 1 (numpy integers are taken)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or (least is not None and value < least)
    ):
        raise ValueError(f"{name}={value!r}: expected an integer" + ("" if least is None else f" >= {least}"))
    return int(value)


def known(flag: str, value: str, allowed: Sequence[str], how_many: str = "one") -> str:
    """``value``, refused unless in ``allowed``, naming the nearest allowed ones (``flag``: the
    option as the user wrote it, e.g. ``--paths``)."""
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed)
        raise ValueError(
            f"{flag} {value}: expected {how_many} of {', '.join(allowed)}"
            + (f"; nearest valid: {', '.join(close)}" if close else "")
        )
    return value


def real(name: str, value: object, allowed: str, accept: Callable[[float], bool]) -> float:
    """``value`` as a float, refused unless a finite real number that ``accept`` takes; ``allowed``
    says which, after "expected". Finite first: NaN fails every comparison, so ``not x <= 0`` lets it by."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not accept(float(value))
    ):
        raise ValueError(f"{name}={value!r}: expected {allowed}")
    return float(value)


def err(a: np.ndarray, ref: np.ndarray, scale: float | None = None) -> float:
    """max|a - ref| / max|ref| (or / scale), the project's one measure of difference."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / (np.max(np.abs(ref)) if scale is None else scale))
