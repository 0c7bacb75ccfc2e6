"""Interference statistics of a vector of per-example changes (Mircea et al. 2025, sec. 1.3).

For per-example quantities x_i (loss changes, or one gradient coordinate over examples)::

    D(x) = 1 - |sum_i x_i| / sum_i |x_i|     in [0, 1]: 0 = all one sign, 1 = perfect cancellation
    M(x) = mean_i |x_i|
    |mean_i x_i| = (1 - D(x)) * M(x)         (the improvement is (1 - D) times the magnitude)

For N i.i.d. symmetric values E|sum x| / E sum|x| ~ 1/sqrt(N), so ``D_null = 1 - 1/sqrt(N)``
is the noise baseline every D is reported next to.

Example::

    >>> interference_stats([3.0, -1.0]).D
    0.5
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["InterferenceStats", "interference_stats", "noise_baseline"]


def noise_baseline(n: int) -> float:
    """``1 - 1/sqrt(n)``: the D of n i.i.d. symmetric values (NaN for n = 0)."""
    return float("nan") if n <= 0 else 1.0 - 1.0 / math.sqrt(n)


@dataclass(frozen=True)
class InterferenceStats:
    """D, M, |mean| and N of one vector of changes; ``D`` is NaN when every change is 0."""

    D: float
    M: float
    dL: float  # |mean_i x_i|
    N: int
    D_null: float
    sum: float  # sum_i x_i (signed: negative = the loss went down)
    abs_sum: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def interference_stats(x: Any) -> InterferenceStats:
    """Statistics of the per-example changes ``x`` (any array-like; flattened, float64).

    Raises ValueError on an empty vector or non-finite entries: a NaN loss change is a broken
    model or batch, not an interference value.
    """
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        x = x.detach().to("cpu").double().numpy()
    v = np.asarray(x, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no per-example values: the batch produced an empty loss tensor")
    if not np.all(np.isfinite(v)):
        bad = int((~np.isfinite(v)).sum())
        raise ValueError(f"{bad} of {v.size} per-example values are not finite (NaN/inf loss)")
    total = float(v.sum())
    abs_total = float(np.abs(v).sum())
    n = int(v.size)
    d = float("nan") if abs_total == 0.0 else 1.0 - abs(total) / abs_total
    return InterferenceStats(
        D=d, M=abs_total / n, dL=abs(total) / n, N=n, D_null=noise_baseline(n), sum=total, abs_sum=abs_total
    )
