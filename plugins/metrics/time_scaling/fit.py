"""Fits for "one-third" time scaling (Liu, Liu, Pehlevan, Gore 2026): L(tau) = c tau^-alpha + L0.

Everything returns a `FitResult` with a status instead of raising on degenerate input
(constant curves, too few points, NaNs), so a trajectory always yields records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FitResult:
    status: str  # ok | skipped
    reason: str | None = None
    params: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    rsle: float | None = None
    n: int = 0


def _clean(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return x[keep], y[keep]


def fit_power_law(tau: np.ndarray, loss: np.ndarray, min_points: int = 5, l0: float | None = None) -> FitResult:
    """Fit ``log L = log(c tau^-alpha + L0)`` with ``curve_fit`` (bounds c >= 0, alpha >= 0,
    0 <= L0 <= min L), p0 = (1, 0.33, min L / 2): the authors' Pythia-notebook fit.

    ``l0`` given (the irreducible loss is known, e.g. 0 for a teacher the student can represent
    exactly): L0 is held at it and only c and alpha are fitted (stderr of L0 = 0). A fitted L0
    trades off against alpha: on one_third's peaked run it came out 0.03 (true 0) and raised
    the local slopes of L - L0 from 0.35 to 0.45."""
    from scipy.optimize import curve_fit

    tau, loss = _clean(tau, loss)
    if len(tau) < min_points:
        return FitResult("skipped", f"{len(tau)} usable points, need {min_points}", n=len(tau))
    if np.ptp(np.log(loss)) < 1e-9:
        return FitResult("skipped", "constant loss curve: no power law to fit", n=len(tau))
    lmin = float(loss.min())
    if l0 is not None and not 0 <= l0 < lmin:
        return FitResult("skipped", f"fixed L0 = {l0:g} is not in [0, min loss = {lmin:.4g})", n=len(tau))

    def model(t: np.ndarray, c: float, alpha: float, l0: float) -> np.ndarray:
        return np.log(c * t ** (-alpha) + l0)

    # initial c so that the curve passes through the first point with alpha = 1/3
    base = 0.5 * lmin if l0 is None else l0
    c0 = max(float((loss[0] - base) * tau[0] ** (1 / 3)), 1e-12)
    try:
        if l0 is None:
            popt, pcov = curve_fit(
                model, tau, np.log(loss), p0=(c0, 1 / 3, 0.5 * lmin),
                bounds=([0.0, 0.0, 0.0], [np.inf, 10.0, lmin]), maxfev=20000,
            )
        else:
            popt2, pcov2 = curve_fit(
                lambda t, c, alpha: model(t, c, alpha, l0), tau, np.log(loss), p0=(c0, 1 / 3),
                bounds=([0.0, 0.0], [np.inf, 10.0]), maxfev=20000,
            )
            popt = np.array([*popt2, l0])
            pcov = np.zeros((3, 3))
            pcov[:2, :2] = pcov2
    except (RuntimeError, ValueError) as exc:
        return FitResult("skipped", f"fit did not converge: {exc}", n=len(tau))
    perr = np.sqrt(np.clip(np.diag(pcov), 0, None)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    resid = model(tau, *popt) - np.log(loss)
    return FitResult(
        "ok",
        params={"c": float(popt[0]), "alpha": float(popt[1]), "L0": float(popt[2])},
        stderr={"c": float(perr[0]), "alpha": float(perr[1]), "L0": float(perr[2])},
        rsle=float(np.sqrt(np.mean(resid**2))),
        n=len(tau),
    )


def ols_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope of y on x by least squares, and its standard error."""
    from scipy.stats import linregress

    res = linregress(x, y)
    return float(res.slope), float(res.stderr)


def local_slopes(tau: np.ndarray, loss: np.ndarray, l0: float, decades: float = 0.5,
                 min_points: int = 3) -> list[dict[str, Any]]:
    """``-d log(L - L0) / d log tau`` by OLS over consecutive windows ``decades`` wide.

    The windows are anchored at the END of the curve and laid backwards: the last window is
    always ``[tau_max / 10**decades, tau_max]``, so the last slope is the asymptotic one the
    paper means. (Anchored at the first point, a run whose span is not a whole number of
    windows lost its last partial window: one_third's default run, tau 4.5e3..4e5, ended its
    last window at 1.42e5.) A leading partial window (the early transient) is dropped instead.
    Returned in increasing tau.
    """
    tau, loss = _clean(tau, loss)
    excess = loss - l0
    keep = excess > 0
    tau, excess = tau[keep], excess[keep]
    out: list[dict[str, Any]] = []
    if len(tau) < min_points:
        return out
    lt, ly = np.log10(tau), np.log(excess)
    end = lt[-1]
    while end - decades >= lt[0] - 1e-9:
        sel = (lt >= end - decades - 1e-12) & (lt <= end + 1e-12)
        if sel.sum() >= min_points:
            slope, err = ols_slope(lt[sel] * math.log(10), ly[sel])
            out.append({"tau_lo": 10 ** (end - decades), "tau_hi": 10**end, "slope": -slope, "stderr": err,
                        "n": int(sel.sum())})
        end -= decades
    return out[::-1]


def log_binned(x: np.ndarray, y: np.ndarray, bins_per_decade: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Average a dense noisy curve in log-spaced bins of x (geometric-mean x per bin)."""
    x, y = _clean(x, y)
    if len(x) == 0:
        return x, y
    lx = np.log10(x)
    edges = np.arange(math.floor(lx.min() * bins_per_decade), math.ceil(lx.max() * bins_per_decade) + 2)
    idx = np.floor(lx * bins_per_decade).astype(int)
    xs, ys = [], []
    for e in edges:
        sel = idx == e
        if sel.any():
            xs.append(float(np.exp(np.log(x[sel]).mean())))
            ys.append(float(y[sel].mean()))
    return np.array(xs), np.array(ys)
