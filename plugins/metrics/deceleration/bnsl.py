"""Broken neural scaling law (BNSL) fits with any number of breaks, in three modes.

The law (Caballero et al. 2022, arXiv 2210.14891), with n breaks::

    y = a + b * x**(-c0) * prod_i (1 + (x / d_i)**(1 / f_i))**(-c_i * f_i)

* ``mode="zsl"``: the loss-deceleration fit of Mircea et al. 2025 (arXiv 2506.05447,
  ``analyses/01-deceleration/fit_bnsl.ipynb``): no limit term (a = 0), the model is fitted
  in log-log space, ``log y ~ log x``, by unweighted least squares with ``curve_fit(...,
  method="dogbox")`` from slope-based initial values around a break guess (6000 steps by
  default, as hard-coded by the authors). Parameters ``b, c0, (c_i, dlog_i = log d_i, f_i)``.
  The preprocessing of the authors (log moving average, log-spaced subsampling, transient
  steps dropped) is `preprocess_zsl`, applied by the caller before `fit_bnsl`.
* ``mode="caballero"``: the procedure of the BNSL repository: a grid search on
  ``mean((log(yhat+1) - log(y+1))**2)`` with ``b`` and ``d_i`` re-parametrised as
  ``1.25**p - 1 + 1e-8``, then unconstrained Levenberg-Marquardt (``curve_fit``) on
  ``log(y+1)`` from the best grid point. Parameters ``a, b, c0, (c_i, d_i, f_i)``. The grid
  runs on ``scipy.optimize.brute`` (``grid_engine="brute"``, the repo's call) or on a
  tabulated numpy engine (``"vectorized"``, the default: same argmin, ~12x faster).

* ``mode="robust"`` (`robust.fit_robust`, the metric's default): the same law with a loss
  floor, fitted from break guesses read off the data, multi-start with bounds, on log-binned
  points, and a break kept only when the data show one (else status ``no_break``).

The zsl and caballero modes accept ``bounds=True`` (f_i in [1e-3, 10], d_i inside the data range, b > 0,
a >= 0) and ``n_starts > 1`` (extra starts with the breaks spread over the data range; the
lowest residual wins) as robustness options the authors do not use.

`fit_bnsl` never raises on bad data: constant curves, too few points, NaNs or a failed
optimisation come back as a `BNSLFit` whose ``status`` says what happened.

Example::

    x, y = preprocess_zsl(steps, loss)                 # authors' preprocessing
    fit = fit_bnsl(x, y, mode="zsl", n_breaks=1)
    if fit.ok:
        fit.t_d, fit.L_d, fit.r_d, fit.extrapolate(262144), fit.rsle, fit.derived_stderr()
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, brute, curve_fit

logger = logging.getLogger(__name__)

MODES = ("robust", "zsl", "caballero")
GRID_ENGINES = ("brute", "vectorized")

#: the authors' hard-coded break guess (``d1_est = 6000``) for 262,144-step runs
ZSL_BREAK_GUESS = 6000.0
#: the authors' initial break sharpness
ZSL_F_INIT = 0.3
#: robustness bounds on the sharpness f_i (smaller = sharper)
F_BOUNDS = (1e-3, 10.0)

#: grid of the BNSL repository's 4-digit-addition fit (per break: c, p_d, f), as
#: [start, stop, step] with an exclusive stop (``slice`` / ``np.mgrid`` semantics)
CABALLERO_GRID: dict[str, tuple[float, float, float]] = {
    "a": (0.0, 1.0, 0.1),
    "p_b": (0.0, 40.0, 2.5),
    "c0": (0.0, 1.0, 0.25),
    "c": (0.0, 1.0, 0.25),
    "p_d": (0.0, 40.0, 2.5),
    "f": (0.0, 1.0, 0.25),
}

#: the most grid points a caballero search may visit (a guard against a grid that would run
#: for hours: 6 + 3 per extra break dimensions multiply fast)
MAX_GRID_POINTS = 5_000_000
#: the most points a caballero fit runs on; a longer curve is fitted on a log-spaced subsample
#: of this many points (with a warning): the grid costs (grid points x curve points)
CABALLERO_MAX_POINTS = 2000
#: the most bytes one temporary (grid points x curve points) array of the vectorised grid
#: search may take; the grid is evaluated in chunks of at most this size (about 4 such arrays
#: are alive at once, so the grid search stays under ~64 MiB plus its break tables)
GRID_MEMORY = 16 * 2**20
#: the caballero refinement's budget; the repo passes maxfev=1e8, which in practice means
#: "until converged", we cap it so a hopeless start cannot run for hours
CABALLERO_MAXFEV = 100_000


class FitFailed(RuntimeError):
    """Every start of a fit failed; the message says why (reported as the fit's status)."""


# ---- the law ----------------------------------------------------------------------------


def _break_terms(logx: np.ndarray, c: float, dlog: float, f: float) -> np.ndarray:
    """``c * f * log(1 + (x/d)**(1/f))``, computed stably with logaddexp.

    ``f == 0`` gives 0: the repository evaluates ``(1 + inf or 0)**(-c*0) = 1`` there, so
    f = 0 silently means "no break" in its grid search; we keep that meaning.
    """
    if f == 0:
        return np.zeros_like(logx)
    return c * f * np.logaddexp(0.0, (logx - dlog) / f)


def param_names(mode: str, n_breaks: int) -> list[str]:
    """Fit parameter names in the order used by the optimiser (and the authors)."""
    head = ["b", "c0"] if mode == "zsl" else ["a", "b", "c0"]
    per = ("c{i}", "d{i}", "f{i}") if mode == "caballero" else ("c{i}", "d{i}log", "f{i}")
    return head + [p.format(i=i) for i in range(1, n_breaks + 1) for p in per]


def log_bnsl_zsl(logx: np.ndarray, b: float, c0: float, *breaks: float) -> np.ndarray:
    """``log y`` of the a = 0 law in the authors' parametrisation (b linear, d as log d)."""
    with np.errstate(all="ignore"):
        out = np.log(b) - c0 * logx
        for i in range(0, len(breaks), 3):
            c, dlog, f = breaks[i : i + 3]
            out = out - _break_terms(logx, c, dlog, f)
    return out


def bnsl(x: np.ndarray, a: float, b: float, c0: float, *breaks: float) -> np.ndarray:
    """The law itself, ``y(x)`` with limit term ``a`` and breaks ``(c_i, d_i, f_i)``."""
    logx = np.log(np.asarray(x, dtype=float))
    with np.errstate(all="ignore"):
        log_red = np.log(b) - c0 * logx
        for i in range(0, len(breaks), 3):
            c, d, f = breaks[i : i + 3]
            log_red = log_red - _break_terms(logx, c, np.log(d), f)
        return a + np.exp(log_red)


# ---- the authors' preprocessing ------------------------------------------------------


def log_moving_average(y: np.ndarray) -> np.ndarray:
    """``out[j] = mean(y[int(j // 1.2) : j + 1])``: a trailing window that widens with j.

    Vectorised with a cumulative sum; ``np.floor_divide`` reproduces Python's float ``//``
    exactly (e.g. ``6 // 1.2 == 4.0``), so the windows are the authors' to the index.
    """
    y = np.asarray(y, dtype=float)
    j = np.arange(len(y))
    lo = np.floor_divide(j, 1.2).astype(int)
    cs = np.concatenate([[0.0], np.cumsum(y)])
    return (cs[j + 1] - cs[lo]) / (j + 1 - lo)


def subsample_mask(steps: np.ndarray, max_exp: int = 3) -> np.ndarray:
    """Log-spaced subsampling: keep the first logged step in each bucket of width
    ``10**min(floor(log10 s) - 1, max_exp)`` (every step below 100, every 10th below 1000,
    every 100th below 1e4, every 1000th above), plus the last step.

    With every step logged this equals the authors' rule ``s % 10**k == 0``; with sparser
    logs (every 10th step, irregular) it still keeps about one point per bucket.
    Steps <= 0 are never kept (they have no logarithm).
    """
    steps = np.asarray(steps, dtype=float)
    keep = np.zeros(len(steps), dtype=bool)
    if len(steps) == 0:
        return keep
    pos = np.flatnonzero(steps > 0)
    s = np.floor(steps[pos]).astype(np.int64)
    # k = clip(floor(log10 s) - 1, 0, max_exp), by integer comparisons (no float log10 at 10**n)
    k = sum((s >= 10 ** (j + 1)).astype(np.int64) for j in range(1, max_exp + 1))
    key = k * (1 << 48) + s // 10**k
    _, first = np.unique(key, return_index=True)  # first logged step of each bucket
    keep[pos[first]] = True
    if steps[-1] > 0:
        keep[-1] = True
    return keep


def preprocess_zsl(
    steps: Sequence[float],
    loss: Sequence[float],
    *,
    smooth: bool = True,
    subsample: bool = True,
    min_step: float = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' preprocessing, in their order: log moving average over the raw per-step
    values, log-spaced subsampling, then transient steps ``<= min_step`` dropped.

    ``steps`` must be sorted ascending. The moving average runs over sample indices, so it
    assumes uniformly spaced logging (every step in the authors' case).
    """
    x = np.asarray(steps, dtype=float)
    y = np.asarray(loss, dtype=float)
    if smooth and len(y):
        y = log_moving_average(y)
    if subsample and len(x):
        m = subsample_mask(x)
        x, y = x[m], y[m]
    m = x > min_step
    return x[m], y[m]


# ---- the result ---------------------------------------------------------------------------


@dataclass
class BNSLFit:
    """The outcome of one fit. ``status``: ``ok`` | ``insufficient`` (too few usable points)
    | ``degenerate`` (a constant curve: no slope to fit) | ``no_break`` (robust mode: the curve
    shows no deceleration in its range) | ``failed`` (the optimiser gave up or returned
    non-finite values). ``x``/``y`` are the points actually fitted."""

    status: str
    mode: str
    n_breaks: int
    x: np.ndarray
    y: np.ndarray
    message: str = ""
    names: list[str] = field(default_factory=list)
    params: np.ndarray | None = None
    pcov: np.ndarray | None = None
    rsle: float = math.nan
    sse: float = math.nan
    warnings: list[str] = field(default_factory=list)
    p0: np.ndarray | None = None
    n_dropped: int = 0
    #: mode-specific details (robust mode: bins, model comparison, the no-break fit)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    # -- parameters in the law's terms ------------------------------------------------------
    def value(self, name: str) -> float:
        return float(self.params[self.names.index(name)])

    @property
    def a(self) -> float:
        return self.value("a") if "a" in self.names else 0.0

    def break_location(self, i: int = 1) -> float:
        return math.exp(self.value(f"d{i}log")) if f"d{i}log" in self.names else self.value(f"d{i}")

    def law_params(self) -> tuple[float, ...]:
        """``(a, b, c0, c1, d1, f1, ...)`` for `bnsl` (d as a location, not its log)."""
        out = [self.a, self.value("b"), self.value("c0")]
        for i in range(1, self.n_breaks + 1):
            out += [self.value(f"c{i}"), self.break_location(i), self.value(f"f{i}")]
        return tuple(out)

    def predict(self, x: Any) -> np.ndarray:
        return bnsl(np.asarray(x, dtype=float), *self.law_params())

    def segment_slopes(self) -> list[float]:
        """Log-log slopes of the reducible part per segment: ``-(c0 + ... + c_k)``."""
        cs = [self.value("c0")] + [self.value(f"c{i}") for i in range(1, self.n_breaks + 1)]
        return [-float(s) for s in np.cumsum(cs)]

    # -- the deceleration quantities (first break) --------------------------------------------
    @property
    def t_d(self) -> float:
        """Deceleration point: the first break location d1."""
        return self.break_location(1)

    @property
    def L_d(self) -> float:  # noqa: N802 (the paper's symbol)
        """Loss at deceleration: the first power-law segment at d1, ``a + b * d1**-c0``."""
        return self.a + self.value("b") * self.t_d ** (-self.value("c0"))

    @property
    def r_d(self) -> float:
        """Log-log slope (as a positive rate) after deceleration: ``c0 + c1``."""
        return self.value("c0") + self.value("c1")

    def extrapolate(self, target: float) -> float:
        """The authors' extrapolation ``L_d * (T / d1)**(-r_d)`` (plus ``a``): the
        post-deceleration power law carried to ``T``."""
        return self.a + (self.L_d - self.a) * (target / self.t_d) ** (-self.r_d)

    def stderr(self) -> dict[str, float]:
        """``sqrt(diag(pcov))`` per fit parameter (NaN where not estimable)."""
        if self.pcov is None:
            return {n: math.nan for n in self.names}
        d = np.diag(self.pcov)
        return {n: float(math.sqrt(v)) if np.isfinite(v) and v >= 0 else math.nan for n, v in zip(self.names, d)}

    def _delta(self, fn: Callable[[np.ndarray], float]) -> float:
        """First-order (delta-method) standard error of ``fn(params)`` from ``pcov``.

        The gradient is taken by central differences with a relative step: the derived
        quantities are smooth, closed-form functions of a handful of parameters.
        """
        if self.pcov is None or not np.all(np.isfinite(self.pcov)):
            return math.nan
        p = np.asarray(self.params, dtype=float)
        g = np.zeros_like(p)
        for k in range(len(p)):
            h = 1e-6 * max(abs(p[k]), 1e-3)
            up, dn = p.copy(), p.copy()
            up[k] += h
            dn[k] -= h
            g[k] = (fn(up) - fn(dn)) / (2 * h)
        var = float(g @ self.pcov @ g)
        return math.sqrt(var) if var >= 0 and math.isfinite(var) else math.nan

    def _with(self, p: np.ndarray) -> BNSLFit:
        return BNSLFit(self.status, self.mode, self.n_breaks, self.x, self.y, names=self.names, params=p)

    def derived_stderr(self, target: float | None = None) -> dict[str, float]:
        """Delta-method standard errors of t_d, L_d, r_d (and the extrapolation at target)."""
        out = {
            "t_d": self._delta(lambda p: self._with(p).t_d),
            "L_d": self._delta(lambda p: self._with(p).L_d),
            "r_d": self._delta(lambda p: self._with(p).r_d),
        }
        if target is not None:
            out["loss_extrapolated"] = self._delta(lambda p: self._with(p).extrapolate(target))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: inputs, parameters, covariance, so the fit can be redone."""
        return {
            "status": self.status,
            "message": self.message,
            "mode": self.mode,
            "n_breaks": self.n_breaks,
            "names": list(self.names),
            "params": None if self.params is None else [float(v) for v in self.params],
            "p0": None if self.p0 is None else [float(v) for v in self.p0],
            "pcov": None if self.pcov is None else np.where(np.isfinite(self.pcov), self.pcov, np.nan).tolist(),
            "rsle": self.rsle,
            "x": [float(v) for v in self.x],
            "y": [float(v) for v in self.y],
            "warnings": list(self.warnings),
            "n_dropped": self.n_dropped,
            "info": self.info,
        }


# ---- initial values -----------------------------------------------------------------------


def _segment_slopes_init(logx: np.ndarray, logy: np.ndarray, break_logs: Sequence[float]) -> list[float]:
    """Mean finite-difference log-log slope of each segment between the break guesses.

    Generalises the authors' 1-break rule (slopes over points ``[0, i]`` and ``[i, end-1]``
    with ``i = argmin |log x - log d1_est|``) to n breaks.
    """
    if len(np.unique(logx)) < len(logx):  # a duplicated x: slopes between distinct x only (no 0/0)
        logx, inv = np.unique(logx, return_inverse=True)
        logy = np.bincount(inv, weights=logy) / np.bincount(inv)
    slopes = np.diff(logy) / np.diff(logx)
    idx = [0] + [int(np.argmin(np.abs(logx - bl))) for bl in break_logs] + [len(slopes)]
    out = []
    for lo, hi in zip(idx[:-1], idx[1:]):
        seg = slopes[lo:hi] if hi > lo else slopes[max(0, min(lo, len(slopes) - 1)) : max(1, lo + 1)]
        out.append(float(np.mean(seg)))
    return out


def zsl_initial(logx: np.ndarray, logy: np.ndarray, break_guesses: Sequence[float]) -> np.ndarray:
    """Slope-based initial values: ``c0 = -s_0``, ``c_k = -(s_k - s_{k-1})``, ``f = 0.3``,
    ``d_k`` at the guesses, ``b = exp(log y0 + c0 log x0)``.

    NOTE: the authors pass ``log y0 + c0 log x0`` (a log-scale number) where the model
    expects linear ``b``; it converges anyway. We pass its exponential, which is what the
    formula means; the optimum is the same.
    """
    s = _segment_slopes_init(logx, logy, [math.log(g) for g in break_guesses])
    c0 = -s[0]
    p = [math.exp(logy[0] + c0 * logx[0]), c0]
    for k, g in enumerate(break_guesses, start=1):
        p += [-(s[k] - s[k - 1]), math.log(g), ZSL_F_INIT]
    return np.asarray(p, dtype=float)


def default_break_guesses(x: np.ndarray, n_breaks: int, guess: Sequence[float] | None) -> list[float]:
    """The break guesses for the first start: the given ones when inside the data range,
    else log-evenly spread interior points. One break defaults to the authors' 6000 steps."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if guess is None and n_breaks == 1:
        guess = [ZSL_BREAK_GUESS]
    if guess is not None and len(guess) == n_breaks and all(lo < g < hi for g in guess):
        return sorted(float(g) for g in guess)
    return spread_breaks(lo, hi, n_breaks)


def spread_breaks(lo: float, hi: float, n_breaks: int) -> list[float]:
    """``n_breaks`` log-evenly spaced interior points of (lo, hi)."""
    llo, lhi = math.log(lo), math.log(hi)
    return [math.exp(llo + (lhi - llo) * (k + 1) / (n_breaks + 1)) for k in range(n_breaks)]


def start_sets(x: np.ndarray, n_breaks: int, guess: Sequence[float] | None, n_starts: int) -> list[list[float]]:
    """Break-guess sets for multi-start: the default first, then sets spread over the
    interior of the log range at staggered offsets (deterministic)."""
    sets = [default_break_guesses(x, n_breaks, guess)]
    lo, hi = math.log(float(np.min(x))), math.log(float(np.max(x)))
    for s in range(1, n_starts):
        frac = s / n_starts  # staggered offsets in (0, 1)
        pts = [math.exp(lo + (hi - lo) * (k + frac) / n_breaks) for k in range(n_breaks)]
        sets.append(sorted(min(max(p, math.exp(lo) * 1.0001), math.exp(hi) / 1.0001) for p in pts))
    return sets


# ---- fitting ---------------------------------------------------------------------------------


def _clean(x: Any, y: Any, mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    m = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    order = np.argsort(x[m], kind="stable")
    return x[m][order], y[m][order], int((~m).sum())


def _result(status: str, mode: str, n_breaks: int, x: np.ndarray, y: np.ndarray, msg: str, **kw: Any) -> BNSLFit:
    return BNSLFit(status, mode, n_breaks, x, y, message=msg, names=param_names(mode, n_breaks), **kw)


def fit_bnsl(
    x: Any,
    y: Any,
    *,
    mode: str = "zsl",
    n_breaks: int = 1,
    break_guess: Sequence[float] | None = None,
    bounds: bool = False,
    n_starts: int | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    grid_engine: str = "vectorized",
    maxfev: int | None = None,
) -> BNSLFit:
    """Fit an ``n_breaks``-break BNSL to points ``(x, y)``; never raises on bad data.

    Non-finite and non-positive points are dropped (counted in ``n_dropped`` and warned).
    ``grid`` (caballero) maps ``a, p_b, c0, c, p_d, f`` (shared by all breaks) or
    ``c1, p_d1, f1, c2, ...`` (per break) to ``[start, stop, step]``; missing keys take
    `CABALLERO_GRID`. ``n_starts``: None = 1 in zsl/caballero, `robust.DEFAULT_STARTS` in
    robust mode (which is always bounded; ``bounds`` and ``grid`` apply to the other modes). ``maxfev`` (function evaluations per start): None keeps each
    mode's reference budget, scipy's default (100 x parameters) for zsl as the authors'
    ``curve_fit`` call, `CABALLERO_MAXFEV` for the caballero refinement.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if grid_engine not in GRID_ENGINES:
        raise ValueError(f"grid_engine must be one of {GRID_ENGINES}, got {grid_engine!r}")
    x, y, dropped = _clean(x, y, mode)
    names = param_names(mode, n_breaks)
    extra_warnings = [f"dropped {dropped} non-finite or non-positive points"] if dropped else []
    need = len(names) + 1
    if len(x) < need:
        return _result(
            "insufficient", mode, n_breaks, x, y,
            f"{len(x)} usable points; a {n_breaks}-break {mode} fit has {len(names)} parameters and needs >= {need}",
            warnings=extra_warnings, n_dropped=dropped,
        )
    if len(np.unique(x)) < 2 or np.ptp(np.log(y)) <= 1e-12 * max(1.0, abs(float(np.log(y).mean()))):
        return _result(
            "degenerate", mode, n_breaks, x, y, "the curve is constant: there is no slope or break to fit",
            warnings=extra_warnings, n_dropped=dropped,
        )
    try:
        if mode == "robust":
            from .robust import fit_robust

            fit = fit_robust(x, y, n_breaks=n_breaks, break_guess=break_guess, n_starts=n_starts, maxfev=maxfev)
        elif mode == "zsl":
            fit = _fit_zsl(x, y, n_breaks, break_guess, bounds, n_starts or 1, maxfev)
        else:
            fit = _fit_caballero(x, y, n_breaks, grid, grid_engine, bounds, n_starts or 1, maxfev)
    except Exception as exc:  # the optimiser's failure is a result, not a crash
        logger.debug("BNSL fit failed", exc_info=True)
        msg = str(exc) if isinstance(exc, FitFailed) else f"{type(exc).__name__}: {exc}"
        return _result("failed", mode, n_breaks, x, y, msg,
                       warnings=extra_warnings, n_dropped=dropped)
    fit.warnings = extra_warnings + fit.warnings
    fit.n_dropped = dropped
    if not fit.ok:
        return fit
    outside = [i for i in range(1, n_breaks + 1) if not x.min() <= fit.break_location(i) <= x.max()]
    if outside:
        fit.warnings.append(
            f"break(s) {outside} outside the fitted range [{x.min():g}, {x.max():g}]: an extrapolation, "
            "not an observed deceleration"
        )
    return fit


def _run_curve_fit(f: Callable, xdata: np.ndarray, ydata: np.ndarray, p0: np.ndarray, **kw: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", OptimizeWarning)
        with np.errstate(all="ignore"):
            popt, pcov = curve_fit(f, xdata, ydata, p0=p0, **kw)
        caught += [str(m.message) for m in w if issubclass(m.category, OptimizeWarning)]
    if not np.all(np.isfinite(popt)):
        raise RuntimeError("optimiser returned non-finite parameters")
    return popt, pcov, caught


def _finish(mode: str, n_breaks: int, x: np.ndarray, y: np.ndarray, popt: np.ndarray, pcov: np.ndarray,
            p0: np.ndarray, warns: list[str]) -> BNSLFit:
    fit = _result("ok", mode, n_breaks, x, y, "", params=np.asarray(popt, float), pcov=np.asarray(pcov, float),
                  p0=np.asarray(p0, float), warnings=list(warns))
    with np.errstate(all="ignore"):
        resid = np.log(fit.predict(x)) - np.log(y)
    if not np.all(np.isfinite(resid)):
        fit.status, fit.message = "failed", "the fitted law is non-finite or non-positive at some fitted points"
        return fit
    fit.sse = float(np.sum(resid**2))
    fit.rsle = float(math.sqrt(np.mean(resid**2)))
    if not np.all(np.isfinite(fit.pcov)):
        fit.warnings.append("parameter covariance could not be estimated (stderr is NaN)")
    return fit


def _inside(p0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``p0`` moved strictly inside finite bounds (least_squares needs a feasible start)."""
    eps_lo = np.where(np.isfinite(lo), 1e-9 * (np.abs(lo) + 1e-300), 0.0)
    eps_hi = np.where(np.isfinite(hi), 1e-9 * (np.abs(hi) + 1e-300), 0.0)
    return np.clip(p0, lo + eps_lo, hi - eps_hi)


def _zsl_bounds(x: np.ndarray, n_breaks: int) -> tuple[np.ndarray, np.ndarray]:
    lo = [1e-300, -np.inf]
    hi = [np.inf, np.inf]
    for _ in range(n_breaks):
        lo += [-np.inf, math.log(x.min()), F_BOUNDS[0]]
        hi += [np.inf, math.log(x.max()), F_BOUNDS[1]]
    return np.asarray(lo), np.asarray(hi)


def _fit_zsl(x, y, n_breaks, break_guess, bounds, n_starts, maxfev) -> BNSLFit:
    logx, logy = np.log(x), np.log(y)
    attempts = []
    for guesses in start_sets(x, n_breaks, break_guess, max(1, n_starts)):
        p0 = zsl_initial(logx, logy, guesses)
        kw: dict[str, Any] = {"method": "dogbox", "max_nfev": maxfev}
        if bounds:
            lo, hi = _zsl_bounds(x, n_breaks)
            p0 = _inside(p0, lo, hi)
            kw["bounds"] = (lo, hi)
        attempts.append((p0, kw))
    return _best_start("zsl", n_breaks, x, y, log_bnsl_zsl, logx, logy, attempts)


def _best_start(mode: str, n_breaks: int, x: np.ndarray, y: np.ndarray, model: Any, fit_x: np.ndarray,
                fit_y: np.ndarray, attempts: list[tuple[np.ndarray, dict[str, Any]]]) -> BNSLFit:
    """Run ``curve_fit`` from every start; keep the lowest-SSE fit, or raise with every reason."""
    best: BNSLFit | None = None
    errors: list[str] = []
    for p0, kw in attempts:
        try:
            popt, pcov, warns = _run_curve_fit(model, fit_x, fit_y, p0, **kw)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        fit = _finish(mode, n_breaks, x, y, popt, pcov, p0, warns)
        if fit.ok and (best is None or fit.sse < best.sse):
            best = fit
        elif not fit.ok:
            errors.append(fit.message)
    if best is None:
        raise FitFailed("; ".join(dict.fromkeys(errors)) or "no start converged")
    return best


def _caballero_ranges(grid: Mapping[str, Sequence[float]] | None, n_breaks: int) -> list[slice]:
    grid = dict(grid or {})
    unknown = set(grid) - set(CABALLERO_GRID) - {f"{k}{i}" for k in ("c", "p_d", "f") for i in range(1, n_breaks + 1)}
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}; allowed a, p_b, c0, c, p_d, f or c<i>, p_d<i>, f<i>")

    def rng(key: str, shared: str | None = None) -> slice:
        start, stop, step = grid.get(key, grid.get(shared, CABALLERO_GRID[shared or key]) if shared else CABALLERO_GRID[key])
        return slice(float(start), float(stop), float(step))

    out = [rng("a"), rng("p_b"), rng("c0")]
    for i in range(1, n_breaks + 1):
        out += [rng(f"c{i}", "c"), rng(f"p_d{i}", "p_d"), rng(f"f{i}", "f")]
    return out


def _repar(q: np.ndarray) -> np.ndarray:
    """Grid coordinates -> law parameters: ``b, d_i = 1.25**p - 1 + 1e-8`` (the repo's)."""
    p = np.array(q, dtype=float, copy=True)
    p[1] = 1.25 ** p[1] - 1 + 1e-8
    p[4::3] = 1.25 ** p[4::3] - 1 + 1e-8
    return p


def _msle_log1p(x: np.ndarray, y1: np.ndarray, q: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        v = float(np.mean((np.log(bnsl(x, *_repar(q)) + 1) - y1) ** 2))
    return v if math.isfinite(v) else math.inf


def _grid_vectorized(x: np.ndarray, y1: np.ndarray, ranges: list[slice], chunk: int | None = None) -> np.ndarray:
    """The grid search with the objective evaluated for many grid points per numpy call.

    NOTE: hand-written because ``scipy.optimize.brute`` calls the objective once per grid
    point from Python, recomputing every break factor each time. Here the break factors
    ``f * log(1 + (x/d)**(1/f))`` are tabulated once per (d, f) pair, ``exp`` of the reducible
    part is taken once per (b, c0, breaks) combination and only ``log(a + 1 + ...)`` runs per
    value of ``a``. Same grid, same objective, and the same argmin as ``brute`` (the first
    minimum in C order); tests check the two agree, bench/bench_deceleration.py times them.
    """
    if chunk is None:  # bounded memory: chunk x len(x) floats per temporary (see GRID_MEMORY)
        chunk = max(1, min(4096, GRID_MEMORY // (8 * max(1, len(x)))))
    axes = [np.arange(s.start, s.stop, s.step) for s in ranges]
    shape = tuple(len(v) for v in axes)
    sub_shape, sub_total = shape[1:], int(np.prod(shape[1:]))
    logx = np.log(x)
    n_breaks = (len(axes) - 3) // 3
    tables = []
    for k in range(n_breaks):
        d = 1.25 ** axes[4 + 3 * k] - 1 + 1e-8
        f = axes[5 + 3 * k]
        with np.errstate(all="ignore"):
            z = (logx[None, None, :] - np.log(d)[:, None, None]) / np.where(f == 0, 1.0, f)[None, :, None]
            t = f[None, :, None] * np.logaddexp(0.0, z)
        tables.append(np.where((f == 0)[None, :, None], 0.0, t))  # f = 0: no break (see _break_terms)
    logb = np.log(1.25 ** axes[1] - 1 + 1e-8)
    best_val, best_idx = math.inf, 0
    for start in range(0, sub_total, chunk):
        flat = np.arange(start, min(sub_total, start + chunk))
        idx = np.unravel_index(flat, sub_shape)  # over (p_b, c0, c1, p_d1, f1, ...)
        with np.errstate(all="ignore"):
            log_red = logb[idx[0]][:, None] - axes[2][idx[1]][:, None] * logx[None, :]
            for k in range(n_breaks):
                c = axes[3 + 3 * k][idx[2 + 3 * k]]
                log_red -= c[:, None] * tables[k][idx[3 + 3 * k], idx[4 + 3 * k]]
            red = np.exp(log_red)
            for ia, a in enumerate(axes[0]):
                obj = np.mean((np.log(a + 1 + red) - y1[None, :]) ** 2, axis=1)
                obj = np.where(np.isfinite(obj), obj, np.inf)
                k = int(np.argmin(obj))
                gidx = ia * sub_total + int(flat[k])
                if obj[k] < best_val or (obj[k] == best_val and gidx < best_idx):
                    best_val, best_idx = float(obj[k]), gidx
    idx = np.unravel_index(best_idx, shape)
    return np.array([axes[k][idx[k]] for k in range(len(axes))], dtype=float)


def caballero_grid_best(x: np.ndarray, y: np.ndarray, n_breaks: int, grid: Mapping[str, Sequence[float]] | None = None,
                        engine: str = "vectorized") -> np.ndarray:
    """Best grid point in law parameters ``(a, b, c0, c1, d1, f1, ...)``."""
    ranges = _caballero_ranges(grid, n_breaks)
    n_points = int(np.prod([len(np.arange(s.start, s.stop, s.step)) for s in ranges]))
    if n_points > MAX_GRID_POINTS:
        raise ValueError(f"the caballero grid has {n_points} points (> {MAX_GRID_POINTS}); give a coarser grid")
    y1 = np.log(y + 1)
    if engine == "brute":
        q = brute(lambda q: _msle_log1p(x, y1, q), ranges, finish=None)
        q = np.atleast_1d(np.asarray(q, dtype=float))
    else:
        q = _grid_vectorized(x, y1, ranges)
    return _repar(q)


def _caballero_bounds(x: np.ndarray, n_breaks: int) -> tuple[np.ndarray, np.ndarray]:
    lo = [0.0, 1e-300, -np.inf]
    hi = [np.inf, np.inf, np.inf]
    for _ in range(n_breaks):
        lo += [-np.inf, float(x.min()), F_BOUNDS[0]]
        hi += [np.inf, float(x.max()), F_BOUNDS[1]]
    return np.asarray(lo), np.asarray(hi)


def _fit_caballero(x, y, n_breaks, grid, engine, bounds, n_starts, maxfev) -> BNSLFit:
    def model(xx: np.ndarray, *p: float) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.log(bnsl(xx, *p) + 1)

    notes: list[str] = []
    if len(x) > CABALLERO_MAX_POINTS:  # bounded time and memory: a log-spaced subsample
        idx = np.unique(np.geomspace(1, len(x), CABALLERO_MAX_POINTS).astype(np.int64) - 1)
        notes.append(f"caballero fit on a log-spaced subsample of {len(idx)} of {len(x)} points")
        x, y = x[idx], y[idx]
    y1 = np.log(y + 1)
    starts = [caballero_grid_best(x, y, n_breaks, grid, engine)]
    # extra starts: the grid's best a, b, c's with the breaks moved across the data range
    for guesses in start_sets(x, n_breaks, None, max(1, n_starts))[1:] if n_starts > 1 else []:
        p = starts[0].copy()
        p[4::3] = guesses
        p[5::3] = np.where(p[5::3] > 0, p[5::3], ZSL_F_INIT)
        starts.append(p)
    attempts = []
    for p0 in starts:
        kw: dict[str, Any] = {"maxfev": maxfev or CABALLERO_MAXFEV}
        if bounds:
            lo, hi = _caballero_bounds(x, n_breaks)
            p0 = _inside(p0, lo, hi)
            kw = {"bounds": (lo, hi), "method": "trf", "max_nfev": maxfev or CABALLERO_MAXFEV}
        attempts.append((p0, kw))
    fit = _best_start("caballero", n_breaks, x, y, model, x, y1, attempts)
    fit.warnings = notes + fit.warnings
    return fit
