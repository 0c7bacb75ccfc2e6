"""Finite-size fits across model sizes at one aligned step (docs/transport.md: the reconstruction).

For each included size n with system size N_n and per-event cascade statistics, the
observables are (``stat`` = mean or max over events)::

    S_n = stat(S),  T_n = stat(T),  V_n = S_n / T_n  (or stat(M) / T_n),  v_rel = V_n / N_n

and every exponent is the OLS slope of log(observable) on log N over the same sizes::

    D (from S), z (from T), beta (from V), delta (from v_rel)

so with ratio-of-means observables ``delta = D - z - 1`` holds exactly (closure
"rom"); the per-event definition ``<S / (N T)>`` gives ``delta_event`` and the closure
residual ``delta_event - (D - z - 1)`` that is not zero by construction.

Uncertainty: bootstrap over events within each size (the probe's randomness), and the
leave-one-size-out spread. Compressibility: R^2 of the one-slope fit, a curvature test
(t of a (log N)^2 term and the BIC difference; needs 4 sizes) and the LOSO spread.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

EXPONENTS = {"D": "S", "z": "T", "beta": "V", "delta": "v_rel"}


@dataclass
class SizeEvents:
    """Per-event statistics of one size at one step and channel."""

    size: str
    N: float
    S: np.ndarray
    T: np.ndarray
    M: np.ndarray
    area: np.ndarray = field(default_factory=lambda: np.empty(0))


def observables(S: np.ndarray, T: np.ndarray, M: np.ndarray, N: float, statistic: str = "mean",
                transport: str = "topplings") -> dict[str, np.ndarray]:
    """Observables from event arrays; the last axis is events (leading axes: bootstrap)."""
    agg = np.mean if statistic == "mean" else np.max
    s, t = agg(S, axis=-1), agg(T, axis=-1)
    load = s if transport == "topplings" else agg(M, axis=-1)
    v = load / t
    per_event = (S if transport == "topplings" else M) / (N * T)
    return {"S": s, "T": t, "V": v, "v_rel": v / N, "v_rel_event": np.mean(per_event, axis=-1)}


def ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of y on x; ``y`` may have leading axes (vectorised over them)."""
    xc = x - x.mean()
    slope = (y - y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)
    return slope, y.mean(axis=-1) - slope * x.mean()


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    slope, icpt = ols(x, y)
    rss = float(np.sum((y - icpt - slope * x) ** 2))
    tss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - rss / tss if tss > 0 else 1.0


def curvature(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Quadratic-in-log-N test: t and two-sided p of the x^2 coefficient, BIC(quad)-BIC(lin).

    Needs at least 4 points (one residual degree of freedom for the quadratic).
    """
    n = x.size
    if n < 4:
        raise ValueError(f"curvature test needs >= 4 sizes, have {n}")
    xc = x - x.mean()
    X1 = np.column_stack([np.ones(n), xc])
    X2 = np.column_stack([np.ones(n), xc, xc**2])
    b2, *_ = np.linalg.lstsq(X2, y, rcond=None)
    rss2 = float(np.sum((y - X2 @ b2) ** 2))
    b1, *_ = np.linalg.lstsq(X1, y, rcond=None)
    rss1 = float(np.sum((y - X1 @ b1) ** 2))
    dof = n - 3
    sigma2 = rss2 / dof
    cov = sigma2 * np.linalg.inv(X2.T @ X2)
    se = math.sqrt(cov[2, 2]) if cov[2, 2] > 0 else 0.0
    t = b2[2] / se if se > 0 else (math.inf if b2[2] != 0 else 0.0)
    p = float(2 * stats.t.sf(abs(t), dof)) if math.isfinite(t) else 0.0
    tiny = 1e-300  # a perfect fit has RSS 0: keep the log finite

    def bic(rss: float, k: int) -> float:
        return n * math.log(max(rss, tiny) / n) + k * math.log(n)

    return {"t": float(t), "p": p, "delta_bic": bic(rss2, 3) - bic(rss1, 2), "coef": float(b2[2])}


def loso_spread(x: np.ndarray, y: np.ndarray) -> float:
    """Largest |slope without one size - slope with all| (needs >= 4 sizes: 3 left)."""
    if x.size < 4:
        raise ValueError(f"leave-one-size-out needs >= 4 sizes, have {x.size}")
    full, _ = ols(x, y)
    keep = ~np.eye(x.size, dtype=bool)
    return float(max(abs(ols(x[k], y[k])[0] - full) for k in keep))


@dataclass
class StepFit:
    """All fits of one channel at one step."""

    sizes: list[str]
    N: np.ndarray
    values: dict[str, float]  # exponent -> slope (plus delta_event, closure residuals)
    intercepts: dict[str, float]
    stderr: dict[str, float | None]
    ci: dict[str, tuple[float, float] | None]
    boot: dict[str, np.ndarray]  # bootstrap samples (for departures)
    compress: dict[str, dict[str, float | None]]
    per_size: dict[str, dict[str, float]]  # size -> observables (point estimates)
    per_size_boot: dict[str, dict[str, np.ndarray]]


def fit_step(data: list[SizeEvents], statistic: str = "mean", transport: str = "topplings",
             n_boot: int = 200, rng: np.random.Generator | None = None) -> StepFit:
    """Fit D, z, beta, delta (+ per-event delta, closure) over the given sizes."""
    if len(data) < 3:
        raise ValueError(f"finite-size fit needs >= 3 sizes, have {len(data)}")
    rng = rng or np.random.default_rng(0)
    data = sorted(data, key=lambda d: d.N)
    x = np.log(np.array([d.N for d in data], dtype=float))
    obs = [observables(d.S, d.T, d.M, d.N, statistic, transport) for d in data]
    logs = {k: np.log(np.array([o[k] for o in obs], dtype=float)) for k in ("S", "T", "V", "v_rel", "v_rel_event")}
    values, intercepts = {}, {}
    for name, key in list(EXPONENTS.items()) + [("delta_event", "v_rel_event")]:
        values[name], intercepts[name] = (float(v) for v in ols(x, logs[key]))
    values["closure_residual"] = values["delta_event"] - (values["D"] - values["z"] - 1)
    values["closure_residual_rom"] = values["delta"] - (values["D"] - values["z"] - 1)

    boot: dict[str, np.ndarray] = {}
    per_size_boot: dict[str, dict[str, np.ndarray]] = {}
    can_boot = n_boot > 0 and all(d.S.size > 1 for d in data)
    if can_boot:
        blogs = {k: [] for k in logs}
        for d in data:
            idx = rng.integers(0, d.S.size, size=(n_boot, d.S.size))
            o = observables(d.S[idx], d.T[idx], d.M[idx], d.N, statistic, transport)
            per_size_boot[d.size] = o
            for k in blogs:
                blogs[k].append(np.log(o[k]))
        B = {k: np.stack(v, axis=-1) for k, v in blogs.items()}  # (n_boot, sizes)
        for name, key in list(EXPONENTS.items()) + [("delta_event", "v_rel_event")]:
            boot[name] = ols(x, B[key])[0]
            boot[name + "_intercept"] = ols(x, B[key])[1]
        boot["closure_residual"] = boot["delta_event"] - (boot["D"] - boot["z"] - 1)
        boot["closure_residual_rom"] = boot["delta"] - (boot["D"] - boot["z"] - 1)
    stderr: dict[str, float | None] = {}
    ci: dict[str, tuple[float, float] | None] = {}
    for k in values:
        b = boot.get(k)
        ok = b is not None and np.all(np.isfinite(b))
        stderr[k] = float(np.std(b, ddof=1)) if ok else None
        ci[k] = (float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))) if ok else None
    for k in list(intercepts):
        b = boot.get(k + "_intercept")
        stderr[k + "_intercept"] = float(np.std(b, ddof=1)) if b is not None else None
    compress: dict[str, dict[str, float | None]] = {}
    for name, key in EXPONENTS.items():
        c: dict[str, float | None] = {"r2": r_squared(x, logs[key])}
        if x.size >= 4:
            cv = curvature(x, logs[key])
            c.update(curvature_t=cv["t"], curvature_p=cv["p"], delta_bic=cv["delta_bic"],
                     loso_spread=loso_spread(x, logs[key]))
        compress[name] = c
    per_size = {d.size: {k: float(v) for k, v in o.items()} | {"N": d.N} for d, o in zip(data, obs)}
    return StepFit([d.size for d in data], np.exp(x), values, intercepts, stderr, ci, boot, compress,
                   per_size, per_size_boot)
