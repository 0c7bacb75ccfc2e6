"""The robust BNSL fit: deceleration's default mode, for loss curves of any length and shape.

The authors' procedure (``mode="zsl"`` in `bnsl`) is tuned to 262,144-step OLMo runs: a
break guessed at step 6000, transients cut at step 100, no limit term, one unbounded start.
On other curves it fails (short toy runs, a loss with an irreducible floor, duplicated steps).
This mode fits the same law with what a user's curve needs::

    log y = log(a + b * x**-c0 * prod_i (1 + (x/d_i)**(1/f_i))**(-c_i f_i))

1. **Points.** Non-finite and non-positive points are dropped and counted (by `bnsl.fit_bnsl`).
   Every decade of x weighs the same however the steps were logged: a curve of more than
   ``MAX_POINTS`` points is averaged in log-spaced bins (`log_bin`, ``BINS_PER_DECADE`` per
   decade: mean of log x and log y per bin), which also averages noise out and bounds the
   fit's size whatever the length of the log (memory, see below); a shorter curve is fitted
   point by point with each point weighted by 1 / (points in its bin), so duplicated or
   densely logged steps do not dominate and exact curves are recovered exactly.
2. **Break guesses from the data** (`hinge_breaks`): the best continuous piecewise-linear fit
   of log y on log x over the interior points, not a fixed step.
3. **Multi-start with bounds.** ``scipy.optimize.curve_fit(method="trf")`` from the hinge
   guess and from breaks spread over the range, each with a floor start of 0 and min(y)/2;
   bounds keep ``0 <= a < min y``, breaks inside the data, ``f`` in `bnsl.F_BOUNDS`. The
   lowest residual wins.
4. **A break must be real.** The same law without a break (``a + b x**-c0``, multi-start) is
   fitted too; the break model is kept only when its BIC is lower by more than
   `BREAK_EVIDENCE` (Kass & Raftery's "very strong" evidence), its first break lies strictly
   inside the fitted points and the slope decreases there (``c1 < -SLOPE_CHANGE_MIN``: a
   *deceleration*).
   Otherwise the result has status ``no_break`` with the reason ("no deceleration in this
   range: ..."), which the metric reports as ``skipped``, never as an error.

With the limit term ``a`` the deceleration quantities are those of the reducible part
``L - a`` (as in caballero mode): ``r_d = c0 + c1`` is its log-log rate after the break,
``L_d = a + b d1**-c0``.

Memory: besides the caller's input arrays, `log_bin` holds O(n) int64/float64 temporaries
(about 40 bytes per point, freed on return); every fit then runs on at most
``max(MAX_POINTS, BINS_PER_DECADE * decades)`` points, so a 10**6-row log fits in well under
100 MiB (measured in ``tests/test_fit_properties.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from .bnsl import F_BOUNDS, ZSL_F_INIT, BNSLFit, _finish, _inside, _result, param_names, spread_breaks

MODE = "robust"
#: log-spaced bins per decade of x (`log_bin`): the averaging bins of a long curve and the
#: weighting bins of a short one
BINS_PER_DECADE = 40
#: a curve with more points than this is fitted on its log-bin means
MAX_POINTS = 1000
#: the most knot positions `hinge_breaks` tries per knot
MAX_KNOT_CANDIDATES = 200
#: how much lower the break model's BIC must be to count as a break (Kass & Raftery 1995:
#: a BIC difference above 10 is "very strong" evidence)
BREAK_EVIDENCE = 10.0
#: the smallest residual RMS the BIC sees (noiseless curves would otherwise compare log(0))
RESID_FLOOR = 1e-6
#: a start whose residual RMS is below this is exact: the other starts are not tried
EXACT_RMS = 1e-10
#: the smallest slope change (|c1|, log-log) that counts as a deceleration
SLOPE_CHANGE_MIN = 1e-3
#: default starts per model (break guesses x floor guesses)
DEFAULT_STARTS = 6
#: optimiser budget per start (function evaluations)
MAXFEV = 4000
#: bound on |c0|, |c_i| (log-log slopes); generous, it only keeps the optimiser finite
SLOPE_BOUND = 50.0


def _bin_keys(x: np.ndarray, bins_per_decade: int) -> np.ndarray:
    key = np.floor(np.log(x) * (bins_per_decade / math.log(10.0))).astype(np.int64)
    return key - key.min() if len(key) else key


def bin_counts(x: np.ndarray, bins_per_decade: int = BINS_PER_DECADE) -> np.ndarray:
    """For each point, how many points share its log-spaced bin."""
    key = _bin_keys(x, bins_per_decade)
    return np.bincount(key)[key]


def log_bin(x: np.ndarray, y: np.ndarray, bins_per_decade: int = BINS_PER_DECADE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points averaged in log-spaced bins: ``(exp mean log x, exp mean log y, count)`` per bin,
    sorted by x. ``x`` and ``y`` must be finite and positive. O(n) time and memory."""
    lx, ly = np.log(x), np.log(y)
    key = _bin_keys(x, bins_per_decade)
    count = np.bincount(key)
    keep = count > 0
    sx = np.bincount(key, weights=lx)[keep]
    sy = np.bincount(key, weights=ly)[keep]
    c = count[keep]
    return np.exp(sx / c), np.exp(sy / c), c


def _hinge_design(u: np.ndarray, knots: Sequence[float]) -> np.ndarray:
    cols = [np.ones_like(u), u] + [np.maximum(0.0, u - k) for k in knots]
    return np.stack(cols, axis=1)


def _lstsq_sse(A: np.ndarray, v: np.ndarray) -> tuple[float, np.ndarray]:
    coef, *_ = np.linalg.lstsq(A, v, rcond=None)
    r = A @ coef - v
    return float(r @ r), coef


def hinge_breaks(u: np.ndarray, v: np.ndarray, n_breaks: int, margin: int = 2) -> tuple[list[float], np.ndarray]:
    """Break guesses (as log x) from the data: the knots of the best continuous
    piecewise-linear fit of ``v`` on ``u`` (added greedily, one knot at a time, each at an
    interior point at least ``margin`` points from either end), and the fit's coefficients
    ``(intercept, slope_0, slope changes...)``."""
    knots: list[float] = []
    cand = np.unique(u[margin : len(u) - margin])
    if len(cand) > MAX_KNOT_CANDIDATES:  # evenly thinned: a guess needs no finer grid
        cand = cand[np.linspace(0, len(cand) - 1, MAX_KNOT_CANDIDATES).astype(int)]
    for _ in range(n_breaks):
        cand = cand[[all(abs(k - q) > 1e-12 for q in knots) for k in cand]]
        if len(cand) == 0:  # too few interior points: spread the remaining knots
            lo, hi = float(u[0]), float(u[-1])
            knots += [lo + (hi - lo) * (j + 1) / (n_breaks + 1) for j in range(n_breaks - len(knots))]
            break
        # every candidate at once: normal equations of the design [1, u, hinges..., hinge(candidate)]
        base = _hinge_design(u, knots)  # (n, p)
        hinge = np.maximum(0.0, u[None, :] - cand[:, None])  # (C, n)
        A = np.concatenate([np.broadcast_to(base, (len(cand),) + base.shape), hinge[:, :, None]], axis=2)
        G = np.einsum("cni,cnj->cij", A, A) + 1e-12 * np.eye(A.shape[2])
        b = np.einsum("cni,n->ci", A, v)
        coef = np.linalg.solve(G, b[:, :, None])[:, :, 0]
        sse = float(v @ v) - np.einsum("ci,ci->c", b, coef)
        knots.append(float(cand[int(np.argmin(sse))]))
    knots = sorted(knots)
    _, coef = _lstsq_sse(_hinge_design(u, knots), v)
    return knots, coef


def _log_law(u: np.ndarray, a: float, logb: float, c0: float, *breaks: float) -> np.ndarray:
    """``log y`` of the law with limit term ``a`` (b as log b, d_i as log d_i)."""
    with np.errstate(all="ignore"):
        r = logb - c0 * u
        for i in range(0, len(breaks), 3):
            c, dlog, f = breaks[i : i + 3]
            r = r - c * f * np.logaddexp(0.0, (u - dlog) / f)
        return np.logaddexp(math.log(a), r) if a > 0 else r


def _log_law_jac(u: np.ndarray, a: float, logb: float, c0: float, *breaks: float) -> np.ndarray:
    """The analytic Jacobian of `_log_law` (``w = e^r / (a + e^r)`` the reducible share)."""
    with np.errstate(all="ignore"):
        r = logb - c0 * u
        terms = []
        for i in range(0, len(breaks), 3):
            c, dlog, f = breaks[i : i + 3]
            z = (u - dlog) / f
            sp = np.logaddexp(0.0, z)
            sig = np.exp(z - sp)  # logistic(z)
            r = r - c * f * sp
            terms.append((c, f, z, sp, sig))
        v = np.logaddexp(math.log(a), r) if a > 0 else r
        w = np.exp(r - v)
        cols = [np.exp(-v), w, -w * u]
        for c, f, z, sp, sig in terms:
            cols += [-w * f * sp, w * c * sig, -w * c * (sp - z * sig)]
    return np.stack(cols, axis=1)


def _bounds(u: np.ndarray, ymin: float, n_breaks: int) -> tuple[np.ndarray, np.ndarray]:
    lo = [0.0, -np.inf, -SLOPE_BOUND]
    hi = [ymin * (1 - 1e-6), np.inf, SLOPE_BOUND]
    for _ in range(n_breaks):
        lo += [-SLOPE_BOUND, float(u[0]), F_BOUNDS[0]]
        hi += [SLOPE_BOUND, float(u[-1]), F_BOUNDS[1]]
    return np.asarray(lo), np.asarray(hi)


def _start(u: np.ndarray, y: np.ndarray, a0: float, knots: Sequence[float]) -> np.ndarray:
    """Initial values from a hinge fit of log(y - a0) with the given knots."""
    v = np.log(np.maximum(y - a0, 1e-300))
    _, coef = _lstsq_sse(_hinge_design(u, knots), v)
    p = [a0, float(coef[0]), -float(coef[1])]
    for k, dc in zip(knots, coef[2:]):
        p += [-float(dc), float(k), ZSL_F_INIT]
    return np.asarray(p, dtype=float)


def _fit_starts(u: np.ndarray, v: np.ndarray, y: np.ndarray, starts: list[np.ndarray], n_breaks: int,
                maxfev: int, sigma: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None, float, list[str]]:
    """The lowest-SSE bounded fit over ``starts``: (params, pcov, sse, reasons of failed starts)."""
    lo, hi = _bounds(u, float(y.min()), n_breaks)
    best: tuple[np.ndarray | None, np.ndarray | None, float] = (None, None, math.inf)
    errors: list[str] = []
    for p0 in starts:
        p0 = _inside(np.nan_to_num(p0, nan=0.0, posinf=1.0, neginf=-1.0), lo, hi)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, pcov = curve_fit(_log_law, u, v, p0=p0, sigma=sigma, bounds=(lo, hi), method="trf",
                                       jac=_log_law_jac, max_nfev=maxfev)
        except Exception as exc:  # one start failing is expected; all failing is reported
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        r = _log_law(u, *popt) - v
        if sigma is not None:
            r = r / sigma
        sse = float(r @ r)
        if np.all(np.isfinite(popt)) and math.isfinite(sse) and sse < best[2]:
            best = (popt, pcov, sse)
            if sse < len(u) * EXACT_RMS**2:  # an exact fit: no start can do better
                break
    return best[0], best[1], best[2], errors


def _bic(sse: float, n: int, k: int) -> float:
    return n * math.log(max(sse / n, RESID_FLOOR**2)) + k * math.log(n)


def _to_law_space(popt: np.ndarray, pcov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, log b, ...) -> (a, b, ...), the covariance carried by the Jacobian of exp."""
    p = popt.copy()
    p[1] = math.exp(popt[1])
    j = np.ones(len(p))
    j[1] = p[1]
    cov = pcov * np.outer(j, j) if pcov is not None else None
    return p, cov


def fit_robust(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_breaks: int = 1,
    break_guess: Sequence[float] | None = None,
    n_starts: int | None = None,
    maxfev: int | None = None,
    bins_per_decade: int = BINS_PER_DECADE,
) -> BNSLFit:
    """Fit the robust way (see the module docstring). ``x``, ``y``: finite, positive, sorted
    by x (`bnsl.fit_bnsl` cleans them first). Never raises on data: the result's status is
    ``ok``, ``no_break`` (no deceleration in this range), ``insufficient`` or ``failed``."""
    names = param_names(MODE, n_breaks)
    n_starts = DEFAULT_STARTS if n_starts is None else max(1, int(n_starts))
    maxfev = int(maxfev or MAXFEV)
    binned = len(x) > MAX_POINTS
    if binned:
        xb, yb, counts = log_bin(x, y, bins_per_decade)
        sigma = None
    else:  # point by point, each weighted by 1 / (points in its bin): sigma = sqrt(count)
        xb, yb, counts = x, y, bin_counts(x, bins_per_decade)
        sigma = np.sqrt(counts.astype(float)) if counts.max() > 1 else None
    info: dict[str, Any] = {"n_points": int(len(x)), "n_fitted": int(len(xb)), "binned": bool(binned),
                            "bins_per_decade": bins_per_decade}
    need = len(names) + 1
    n_distinct = len(np.unique(xb))
    if n_distinct < need:
        fit = _result("insufficient", MODE, n_breaks, xb, yb,
                      f"{n_distinct} usable points{' (log-bin means)' if binned else ' (distinct x)'}; "
                      f"a {n_breaks}-break fit with a loss floor has {len(names)} parameters and needs >= {need}")
        fit.info = info
        return fit
    u, v = np.log(xb), np.log(yb)
    ymin = float(yb.min())

    # -- the law without a break -------------------------------------------------------------
    a_inits = [0.0, 0.5 * ymin, 0.9 * ymin]
    pl_starts = [_start(u, yb, a0, []) for a0 in a_inits]
    pl, _, sse0, _ = _fit_starts(u, v, yb, pl_starts, 0, maxfev, sigma)

    # -- the law with breaks -----------------------------------------------------------------
    knots, _ = hinge_breaks(u, v, n_breaks)
    break_sets: list[list[float]] = [knots]
    if break_guess is not None and len(break_guess) == n_breaks:
        g = [math.log(b) for b in sorted(break_guess) if xb[0] < b < xb[-1]]
        if len(g) == n_breaks:
            break_sets.insert(0, g)
    lo, hi = float(xb[0]), float(xb[-1])
    n_sets = max(1, math.ceil(n_starts / 2))
    for s in range(1, n_sets + 1):
        frac = s / (n_sets + 1)
        pts = [lo * (hi / lo) ** ((k + frac) / n_breaks) for k in range(n_breaks)]
        break_sets.append(sorted(math.log(p) for p in pts))
    if len(break_sets) == 1:
        break_sets.append([math.log(p) for p in spread_breaks(lo, hi, n_breaks)])
    starts = [_start(u, yb, a0, ks) for ks in break_sets for a0 in (0.0, 0.5 * ymin)]
    popt, pcov, sse1, errors = _fit_starts(u, v, yb, starts, n_breaks, maxfev, sigma)
    info["starts"] = len(starts)
    if popt is None:
        fit = _result("failed", MODE, n_breaks, xb, yb, "every start failed: " + "; ".join(dict.fromkeys(errors)))
        fit.info = info
        return fit

    n = len(u)
    bic0 = _bic(sse0, n, 3) if pl is not None else math.inf
    bic1 = _bic(sse1, n, len(names))
    info.update({"bic_break": bic1, "bic_no_break": bic0, "delta_bic": bic0 - bic1,
                 "break_guesses": [math.exp(k) for k in knots]})
    if pl is not None:
        pl_law, _ = _to_law_space(pl, None)
        info["no_break_fit"] = {"a": float(pl_law[0]), "b": float(pl_law[1]), "c0": float(pl_law[2]),
                                "rsle": math.sqrt(sse0 / n)}
    params, cov = _to_law_space(popt, pcov)
    fit = _finish(MODE, n_breaks, xb, yb, params, cov, np.asarray(starts[0]), [])
    fit.info = info
    if not fit.ok:
        return fit
    d1, c1 = math.exp(params[4]), float(params[3])
    reason = None
    if bic0 - bic1 <= BREAK_EVIDENCE:
        reason = (f"a power law{' with a loss floor' if pl is not None and pl[0] > 1e-9 * ymin else ''} "
                  f"without a break fits as well (BIC lower by only {bic0 - bic1:.1f} with the break, "
                  f"needs > {BREAK_EVIDENCE:g})")
    elif not xb[1] < d1 < xb[-2]:
        reason = f"the best break ({d1:.4g}) sits at the edge of the data [{xb[0]:.4g}, {xb[-1]:.4g}]"
    elif c1 > SLOPE_CHANGE_MIN:
        reason = (f"the loss falls faster after the break at {d1:.4g} (c1 = {c1:.3g} > 0): "
                  "an acceleration, not a deceleration")
    elif c1 >= -SLOPE_CHANGE_MIN:
        reason = f"the log-log slope barely changes at the break at {d1:.4g} (|c1| = {abs(c1):.2g} <= {SLOPE_CHANGE_MIN:g})"
    if reason is not None:
        fit.status, fit.message = "no_break", f"no deceleration in this range: {reason}"
    return fit
