"""Conformal intervals from out-of-sample residuals: jackknife+ (Barber et al. 2021).

For a target x and calibration points j = 1..n, each with the leave-j-out model's prediction at
the target ``mu_{-j}(x)`` and its out-of-sample score ``S_j`` (the absolute residual at j of
the model fitted without j, divided by a scale), the interval at level ``1 - alpha`` is::

    lower = the floor(alpha (n+1))-th smallest of   mu_{-j}(x) - scale(x) * S_j
    upper = the ceil((1-alpha)(n+1))-th smallest of mu_{-j}(x) + scale(x) * S_j

(-inf / +inf when n is too small for the level: n + 1 < 1 / alpha). When the model does not
depend on the calibration points (per-run methods), ``mu_{-j}(x) = mu(x)`` and this is split
conformal with a symmetric absolute-residual score. Written out (a few lines) rather than
through `mapie` because the units here are runs, pooled over series with a per-series scale,
which mapie's sklearn-estimator interface does not express; a test checks these lines against
``mapie.regression.CrossConformalRegressor(method="plus", cv=LeaveOneOut())`` and against a
brute-force leave-one-out refit.
"""

from __future__ import annotations

import math

import numpy as np


def rank_lower(alpha: float, n: int) -> int:
    """1-based rank of the lower bound among n values (0 means -inf)."""
    return int(math.floor(alpha * (n + 1) + 1e-12))


def rank_upper(alpha: float, n: int) -> int:
    """1-based rank of the upper bound among n values (n + 1 means +inf)."""
    return int(math.ceil((1 - alpha) * (n + 1) - 1e-12))


def jackknife_plus(mu_minus: np.ndarray, scores: np.ndarray, alpha: float, scale: float = 1.0) -> tuple[float, float]:
    """Jackknife+ interval from leave-one-out predictions at the target and scores (see module)."""
    mu_minus = np.asarray(mu_minus, float)
    scores = np.asarray(scores, float)
    ok = np.isfinite(mu_minus) & np.isfinite(scores)
    mu_minus, scores = mu_minus[ok], scores[ok]
    n = len(scores)
    if n == 0:
        return -math.inf, math.inf
    lo_vals = np.sort(mu_minus - scale * scores)
    hi_vals = np.sort(mu_minus + scale * scores)
    kl, ku = rank_lower(alpha, n), rank_upper(alpha, n)
    lo = float(lo_vals[kl - 1]) if kl >= 1 else -math.inf
    hi = float(hi_vals[ku - 1]) if ku <= n else math.inf
    return lo, hi


def split_conformal(mu: float, scores: np.ndarray, alpha: float, scale: float = 1.0) -> tuple[float, float]:
    """Split conformal: ``mu -/+ scale * q`` with q the ceil((1-alpha)(n+1))-th smallest score."""
    scores = np.asarray(scores, float)
    return jackknife_plus(np.full(len(scores), mu), scores, alpha, scale)
