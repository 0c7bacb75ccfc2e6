"""Forecast methods: predict one series' value at a target step from the points up to a cutoff.

Each method is a small class with ``name``, ``cross_run`` and
``predict(case, train) -> (value, inputs)``; it raises `Skip` with a reason when it cannot
forecast a case (too few points, a flat curve, too few completed runs). ``train`` holds the
*other* runs' cases with their realised values (never the target's): per-run methods ignore
it, cross-run methods learn from it. Calibration (`harness.forecast.conformal`) calls
``predict`` again with smaller training sets, so a method must be a pure function of its inputs.

- ``last``: the value at the cutoff; the baseline every method must beat.
- ``curve``: a saturating power law with floor, ``y = c + a x^-alpha`` (x = step / cutoff step),
  fitted per run by `scipy.optimize.curve_fit`; the sign of ``a`` is free, so it serves scores
  (rising) and losses (falling) alike.
- ``ensemble``: several parametric families in the spirit of Domhan et al. (2015) (pow3,
  log-linear, logistic in log step, Janoschek, MMF, exp3), each weighted by how well it predicts
  the last point before the cutoff from the points before it (out of sample), refitted on all
  points, combined by weighted median.
- ``suite``: cross-run: the gain from the cutoff to the target, ``y_T - y_c``, regressed on
  ``[1, log n_params, y_c]`` over the other completed runs (robust soft-L1 loss, the loss of
  scipy ``least_squares``), applied to the target's ``y_c``; ``log n_params`` is dropped when
  unknown or constant (seeds of one size); where that design is ill-posed for the target
  (leverage > 10: an extrapolation far beyond what the training runs span) the nested designs
  (without size, without ``y_c``, intercept only) compete by leave-one-out error over the
  training runs.
- ``observables``: ``suite`` plus the one early observable (loss, t_d, D, v_rel, ... at the
  cutoff) that best predicts the other runs' gains in an inner leave-one-out over the training
  runs only.

None of these assumes monotone growth: ``suite`` learns gains of either sign; the curve
families are monotone by construction, a stated limit (docs/forecast.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


class Skip(Exception):  # noqa: N818 (a control-flow signal with a reason, not an error)
    """A method cannot forecast this case; ``str(exc)`` is the reason shown as ``skipped``."""


@dataclass
class Case:
    """One run's inputs for one series at one cutoff (and its realised value, when known)."""

    run: str
    series: str
    cutoff: float  # step
    target: float  # step
    steps: np.ndarray  # points at or before the cutoff, ascending, step > 0
    values: np.ndarray
    stderr: np.ndarray
    log_n: float = math.nan
    realised: float | None = None
    realised_stderr: float = math.nan
    features: Mapping[str, float] = field(default_factory=dict)

    @property
    def last(self) -> float:
        """The value at the cutoff."""
        return float(self.values[-1])

    @property
    def last_stderr(self) -> float:
        """The standard error of the value at the cutoff (NaN when unknown)."""
        return float(self.stderr[-1]) if len(self.stderr) else math.nan


class Method:
    """Base class: ``predict(case, train)`` returns ``(value, inputs)`` or raises `Skip`."""

    name: str = ""
    cross_run: bool = False
    description: str = ""

    def predict(self, case: Case, train: Sequence[Case]) -> tuple[float, dict]:
        """The forecast at the case's target step and what it used, or raise `Skip` with the reason."""
        raise NotImplementedError

    def _need_points(self, case: Case, k: int) -> None:
        if len(case.values) == 0:
            raise Skip("no points at or before the cutoff")
        if len(case.values) < k:
            raise Skip(f"too few points before the cutoff ({len(case.values)} < {k})")


class Last(Method):
    """Forecast = the value at the cutoff (the baseline every method must beat)."""
    name = "last"
    description = "value at the cutoff"

    def predict(self, case, train):
        """The value at the cutoff."""
        self._need_points(case, 1)
        return case.last, {"step": float(case.steps[-1])}


# ---- parametric curve families (x = step / cutoff, so x = 1 at the cutoff) --------------------
#
# Every family is ``y = c + a * phi(x; theta)``: linear in (c, a), nonlinear in at most two
# shape parameters theta. Fitting is variable projection: (c, a) in closed form (weighted least
# squares) for every theta of a log-spaced grid at once (numpy), then `scipy.optimize.least_squares`
# refines theta from the best grid point. NOTE: written this way, not as `curve_fit` on all
# parameters from a few starting points (the first version: bounded TRF, many failed starts,
# ~40 s for one cutoff of the Pythia backtest), because the grid + refine is ~6x faster per fit
# at the same chi2 and finds the global grid optimum instead of a local one
# (bench/bench_forecast.py prints the ratio).


@dataclass(frozen=True)
class Family:
    """A parametric curve family ``y = c + a * phi(x; theta)`` with its shape-parameter grids."""
    name: str
    phi: Callable[..., np.ndarray]  # phi(x, *theta), broadcasting over theta arrays
    grids: tuple[np.ndarray, ...]  # one grid per shape parameter
    formula: str

    @property
    def n_params(self) -> int:
        """Number of parameters (c, a and the shape parameters)."""
        return 2 + len(self.grids)

    def __call__(self, x, c, a, *theta):
        """The curve ``c + a * phi(x; theta)`` at ``x``."""
        return c + a * self.phi(x, *theta)


def _lin(phi: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Weighted least squares of y on [1, phi] along the last axis: (c, a, sse)."""
    sw = w.sum()
    mp = (phi * w).sum(-1) / sw
    my = (y * w).sum() / sw
    dp = phi - mp[..., None]
    cov = (dp * (y - my) * w).sum(-1)
    var = (dp * dp * w).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(var > 1e-300, cov / var, 0.0)
        sse = ((y - my) ** 2 * w).sum() - np.where(var > 1e-300, cov * cov / var, 0.0)
    sse = np.where(np.isfinite(a) & (var > 1e-300), np.maximum(sse, 0.0), np.inf)
    return my - a * mp, a, sse


_G1 = np.geomspace(1e-3, 1e2, 120)
FAMILIES: dict[str, Family] = {
    f.name: f for f in (
        Family("pow3", lambda x, al: x ** (-al), (np.geomspace(0.01, 3.0, 150),), "c + a x^-alpha"),
        Family("loglinear", lambda x: np.log(x), (), "c + a log x"),
        Family("logistic_log", lambda x, k, m: 1 / (1 + np.exp(-k * (np.log(x) - m))),
               (np.geomspace(0.05, 20, 40), np.linspace(-8, 4, 49)), "c + a / (1 + exp(-k (log x - m)))"),
        Family("janoschek", lambda x, k, d: np.exp(-k * x**d),
               (np.geomspace(1e-3, 1e2, 50), np.geomspace(0.02, 3.0, 40)), "c + a exp(-k x^d)"),
        Family("mmf", lambda x, k, d: 1 / (1 + (k * x) ** d),
               (np.geomspace(1e-3, 1e4, 50), np.geomspace(0.02, 5.0, 40)), "c + a / (1 + (k x)^d)"),
        Family("exp3", lambda x, k: np.exp(-k * x), (_G1,), "c + a exp(-k x)"),
    )
}


def fit_family(fam: Family, x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    """Weighted least-squares parameters ``(c, a, *theta)`` of one family; raises `Skip`."""
    w = np.ones_like(y) if sigma is None else 1.0 / np.asarray(sigma, float) ** 2
    with np.errstate(all="ignore"):
        if not fam.grids:
            c, a, sse = _lin(fam.phi(x)[None, :], y, w)
            if not np.isfinite(sse[0]):
                raise Skip(f"{fam.name} fit is degenerate")
            return np.array([c[0], a[0]])
        mesh = np.meshgrid(*fam.grids, indexing="ij")
        thetas = [m.ravel() for m in mesh]
        phi = fam.phi(x[None, :], *[t[:, None] for t in thetas])
        phi = np.where(np.isfinite(phi), phi, np.nan)
        bad = ~np.all(np.isfinite(phi), axis=1)
        phi[bad] = 0.0
        c, a, sse = _lin(phi, y, w)
        sse[bad] = np.inf
    i = int(np.argmin(sse))
    if not np.isfinite(sse[i]):
        raise Skip(f"{fam.name} fit did not converge")
    theta0 = np.array([t[i] for t in thetas])
    lo = np.array([g.min() for g in fam.grids])
    hi = np.array([g.max() for g in fam.grids])
    sw = np.sqrt(w)

    def resid(theta):
        with np.errstate(all="ignore"):
            ph = fam.phi(x, *theta)
            cc, aa, _ = _lin(ph[None, :], y, w)
            r = (cc[0] + aa[0] * ph - y) * sw
        return np.where(np.isfinite(r), r, 1e6)

    from scipy.optimize import least_squares

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = least_squares(resid, np.clip(theta0, lo, hi), bounds=(lo, hi), max_nfev=100)
        theta = res.x if np.sum(res.fun**2) <= sse[i] * (1 + 1e-9) else theta0
    except (ValueError, FloatingPointError):  # pragma: no cover (keep the grid optimum)
        theta = theta0
    with np.errstate(all="ignore"):
        ph = fam.phi(x, *theta)
        cc, aa, ss = _lin(ph[None, :], y, w)
    if not np.isfinite(ss[0]):
        raise Skip(f"{fam.name} fit did not converge")
    return np.array([cc[0], aa[0], *theta])


class _CurveBase(Method):
    """Shared by the per-run curve methods: which points they fit, when a curve is flat, and
    the saturation guard.

    Guard: a saturating curve rises (or falls) from the cutoff to the target by no more than
    the straight line in log step through the same points does; a family whose extrapolation
    moves more than ``max_growth`` times that (plus 2 stderr) is not saturating on these points
    and is dropped. Without it, an exp/MMF shape fitted to points still near chance (Pythia at
    5% of training) extrapolated lambada accuracy to 16.
    """

    def __init__(self, min_step_fraction: float = 0.01, noise_floor: float = 2.0, max_growth: float | None = 2.0):
        self.min_step_fraction = min_step_fraction
        self.noise_floor = noise_floor
        self.max_growth = max_growth

    def _guard(self, x, y, sigma, xt: float) -> float:
        """The largest plausible |prediction - last value| (inf when the guard is off)."""
        if self.max_growth is None:
            return math.inf
        p = fit_family(FAMILIES["loglinear"], x, y, sigma)
        lin = abs(float(FAMILIES["loglinear"](np.float64(xt), *p)) - float(y[-1]))
        noise = float(sigma[-1]) if sigma is not None else 0.0
        return self.max_growth * lin + 2 * noise

    def _points(self, case: Case, k: int):
        keep = case.steps >= self.min_step_fraction * case.cutoff
        x, y, se = case.steps[keep] / case.cutoff, case.values[keep], case.stderr[keep]
        if len(y) < k:
            raise Skip(f"too few points after step {self.min_step_fraction:g} x cutoff ({len(y)} < {k})")
        finite_se = se[np.isfinite(se) & (se > 0)]
        noise = float(np.median(finite_se)) if len(finite_se) else 0.0
        if np.ptp(y) <= max(self.noise_floor * noise, 1e-12):
            raise Skip(f"flat curve: values before the cutoff vary by {np.ptp(y):.3g}, within "
                       f"{self.noise_floor:g} x stderr ({noise:.3g})")
        sigma = np.where(np.isfinite(se) & (se > 0), se, noise) if noise > 0 else None
        return x, y, sigma


class Curve(_CurveBase):
    """One saturating curve family fitted to each run's points before the cutoff."""
    name = "curve"
    description = "saturating power law with floor, per run"

    def __init__(self, family: str = "pow3", **kw):
        super().__init__(**kw)
        self.family = FAMILIES[family]

    def predict(self, case, train):
        """The fitted family extrapolated to the target (skipped when it does not saturate)."""
        x, y, sigma = self._points(case, self.family.n_params + 1)
        p = fit_family(self.family, x, y, sigma)
        xt = case.target / case.cutoff
        value = float(self.family(np.float64(xt), *p))
        if not math.isfinite(value):
            raise Skip(f"{self.family.name} extrapolation is not finite")
        if abs(value - y[-1]) > self._guard(x, y, sigma, xt):
            raise Skip(f"{self.family.name} extrapolation moves {abs(value - y[-1]):.3g} from the cutoff, more than "
                       f"{self.max_growth:g} x the log-linear extrapolation: not saturating on these points")
        return value, {"family": self.family.name, "params": [float(v) for v in p], "n_points": len(y)}


class Ensemble(_CurveBase):
    """Curve families weighted by how well each predicts its held-out last points."""
    name = "ensemble"
    description = "parametric curve ensemble weighted by out-of-sample fit (Domhan-style)"

    def __init__(self, families: Sequence[str] = tuple(FAMILIES), **kw):
        super().__init__(**kw)
        self.families = [FAMILIES[f] for f in families]

    def predict(self, case, train):
        """The weighted extrapolation of the families that fit."""
        x, y, sigma = self._points(case, 3)
        xt = np.float64(case.target / case.cutoff)
        s_last = float(sigma[-1]) if sigma is not None else 0.0
        bound = self._guard(x, y, sigma, float(xt))
        preds, weights, why = {}, {}, {}
        for fam in self.families:
            if len(y) - 1 < fam.n_params + 1:
                why[fam.name] = "too few points"
                continue
            try:  # out of sample: the last point before the cutoff from the points before it
                p_hold = fit_family(fam, x[:-1], y[:-1], None if sigma is None else sigma[:-1])
                with np.errstate(all="ignore"):
                    err = float(fam(x[-1], *p_hold) - y[-1])
                p = fit_family(fam, x, y, sigma)
                with np.errstate(all="ignore"):
                    v = float(fam(xt, *p))
            except Skip as exc:
                why[fam.name] = str(exc)
                continue
            if not (math.isfinite(err) and math.isfinite(v)):
                why[fam.name] = "not finite"
                continue
            if abs(v - y[-1]) > bound:
                why[fam.name] = "not saturating (extrapolates beyond the guard)"
                continue
            preds[fam.name] = v
            weights[fam.name] = 1.0 / (err**2 + s_last**2 + 1e-12)
        if not preds:
            raise Skip("no curve family could be fitted: " + "; ".join(f"{k}: {v}" for k, v in why.items()))
        total = sum(weights.values())
        w = {k: weights[k] / total for k in preds}
        value = weighted_median([preds[k] for k in preds], [w[k] for k in preds])
        return value, {"weights": {k: round(v, 4) for k, v in w.items()},
                       "predictions": {k: round(v, 5) for k, v in preds.items()}, "n_points": len(y),
                       **({"dropped": why} if why else {})}


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The lower weighted median: the combination rule of `Ensemble`. A weighted *mean* let one
    family that extrapolates wildly (exp/MMF shapes fitted to points still at chance) move the
    forecast by whole units (Pythia backtest at cutoff 5%: MAE 2.2 with the mean)."""
    order = np.argsort(values)
    v, w = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    cw = np.cumsum(w) / np.sum(w)
    return float(v[int(np.searchsorted(cw, 0.5 - 1e-12))])


# ---- cross-run methods ----------------------------------------------------------------------


def robust_lstsq(A: np.ndarray, y: np.ndarray, f_scale: float, robust: bool = True) -> np.ndarray:
    """Coefficients of ``A @ b ~ y``: ordinary least squares, then (``robust``) the soft-L1 fit
    ``min sum rho((r / f_scale)^2)``, ``rho(z) = 2 (sqrt(1 + z) - 1)``, the loss
    `scipy.optimize.least_squares(loss="soft_l1")` minimises, so one odd run does not swing the
    fit. NOTE: solved by iteratively reweighted least squares (weights ``1/sqrt(1 + z)``) in
    numpy: the same minimum as least_squares (a test compares them) ~3x faster per fit
    (bench/bench_forecast.py), which the nested leave-one-out calibration calls O(runs^2) times
    per series."""
    b = np.linalg.lstsq(A, y, rcond=None)[0]
    if not robust or len(y) <= A.shape[1]:
        return b
    f = max(f_scale, 1e-12)
    for _ in range(100):
        r = A @ b - y
        w = 1.0 / np.sqrt(1.0 + (r / f) ** 2)
        sw = np.sqrt(w)
        b_new = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)[0]
        if np.max(np.abs(b_new - b)) <= 1e-12 * (1 + np.max(np.abs(b))):
            return b_new
        b = b_new
    return b


class Suite(Method):
    """Cross-run regression of the gain to the target on model size and the value at the cutoff."""
    name = "suite"
    cross_run = True
    description = "cross-run: gain to the target regressed on log n_params and the cutoff value"

    #: the design's columns besides the intercept
    SIZE, VALUE = "log_n_params", "value_at_cutoff"

    def __init__(self, robust: bool = True, use_size: bool = True, select: bool = True, max_leverage: float = 10.0):
        self.robust = robust
        self.use_size = use_size
        self.select = select
        self.max_leverage = max_leverage

    def _usable(self, case: Case, train: Sequence[Case]) -> list[Case]:
        self._need_points(case, 1)
        return [c for c in train if c.realised is not None and len(c.values) and math.isfinite(c.realised)]

    def _size_ok(self, case: Case, train: Sequence[Case]) -> bool:
        ns = [c.log_n for c in (case, *train)]
        return self.use_size and all(math.isfinite(v) for v in ns) and np.ptp(ns) > 0

    def column(self, cases: Sequence[Case], name: str) -> np.ndarray:
        """One design column over ``cases``."""
        if name == self.SIZE:
            return np.array([c.log_n for c in cases])
        if name == self.VALUE:
            return np.array([c.last for c in cases])
        return np.array([c.features[name] for c in cases])

    def design(self, cases: Sequence[Case], cols: Sequence[str]) -> np.ndarray:
        """The design matrix (intercept and ``cols``) over ``cases``."""
        return np.column_stack([np.ones(len(cases)), *(self.column(cases, n) for n in cols)])

    def _scale(self, train: Sequence[Case]) -> float:
        se = np.array([c.last_stderr for c in train])
        se = se[np.isfinite(se) & (se > 0)]
        if len(se):
            return float(np.median(se))
        gains = np.array([c.realised - c.last for c in train])
        return float(1.4826 * np.median(np.abs(gains - np.median(gains)))) or 1e-3

    def _fit_predict(self, case, train, cols):
        p = 1 + len(cols)
        if len(train) < p + 2:
            raise Skip(f"too few completed runs to learn from ({len(train)} < {p + 2})")
        A = self.design(train, cols)
        g = np.array([c.realised - c.last for c in train])
        b = robust_lstsq(A, g, self._scale(train), self.robust)
        return float(case.last + self.design([case], cols)[0] @ b), b

    def choose(self, case: Case, train: Sequence[Case]) -> tuple[tuple[str, ...], float]:
        """The design's columns: ``[1, log n, y_c]`` (size only when known and not constant),
        unless it is ill-posed for this target.

        Ill-posed: the target's leverage ``x_t (A'A)^-1 x_t'`` exceeds ``max_leverage`` (10: its
        forecast would rest on an extrapolation wider than the training runs span: e.g. every
        other run at the same value at the cutoff, as wsc's majority-class plateau gives) or a
        training run has leverage ~1 (infinite leave-one-out error). Then the nested designs
        (without size, without y_c, intercept only = the median gain) compete by OLS
        leave-one-out error over the training runs only. Returns (columns, that LOO MAE or nan).
        """
        full = ((self.SIZE,) if self._size_ok(case, train) else ()) + (self.VALUE,)
        if not self.select:
            return full, math.nan
        g = np.array([c.realised - c.last for c in train])

        def ok(cols) -> bool:
            A = self.design(train, cols)
            x = self.design([case], cols)[0]
            lev = float(x @ np.linalg.pinv(A.T @ A) @ x)
            return lev <= self.max_leverage and math.isfinite(_loo_mae(A, g))

        if ok(full):
            return full, math.nan
        options = [tuple(c for c in full if c != drop) for drop in full] + ([()] if len(full) > 1 else [])
        scored = [(_loo_mae(self.design(train, cols), g), -len(cols), cols) for cols in dict.fromkeys(options)
                  if ok(cols)]
        if not scored:
            return (), math.nan
        mae, _, cols = min(scored)
        return cols, mae

    def predict(self, case, train):
        """The regression's prediction for the held-out case from the other runs."""
        train = self._usable(case, train)
        if len(train) < 4:
            raise Skip(f"too few completed runs to learn from ({len(train)} < 4)")
        cols, mae = self.choose(case, train)
        value, b = self._fit_predict(case, train, cols)
        return value, {"features": ["1", *cols], "coef": [round(float(v), 5) for v in b], "n_runs": len(train),
                       **({"inner_loo_mae": round(mae, 5)} if math.isfinite(mae) else {})}


def _loo_mae(A: np.ndarray, g: np.ndarray) -> float:
    """Leave-one-out mean absolute error of OLS (hat-matrix shortcut: e_i / (1 - h_ii))."""
    if len(g) <= A.shape[1]:
        return math.inf
    pinv = np.linalg.pinv(A)
    h = np.einsum("ij,ji->i", A, pinv)
    e = g - A @ (pinv @ g)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = e / (1 - h)
    return float(np.mean(np.abs(loo))) if np.all(np.isfinite(loo)) else math.inf


class Observables(Suite):
    """`Suite` plus the early observable that best predicts the other runs' gains."""
    name = "observables"
    cross_run = True
    description = "suite + the early observable that best predicts the other runs' gains (inner LOO)"

    def candidates(self, case: Case, train: Sequence[Case]) -> dict[str, list[float]]:
        """Feature columns ``{name: [target, *train]}``: each observable finite in every run and
        not constant, raw and (when positive) as ``log(name)``."""
        out = {}
        for n in case.features:
            vals = [case.features.get(n, math.nan)] + [c.features.get(n, math.nan) for c in train]
            if not all(math.isfinite(v) for v in vals) or np.ptp(vals[1:]) == 0:
                continue
            out[n] = vals
            if min(vals) > 0:
                out[f"log({n})"] = list(np.log(vals))
        return out

    def predict(self, case, train):
        """The regression with the chosen observable for the held-out case."""
        train = self._usable(case, train)
        cands = self.candidates(case, train)
        if not cands:
            raise Skip("no observable series at or before the cutoff in every run")
        if len(train) < 5:
            raise Skip(f"too few completed runs to choose an observable ({len(train)} < 5)")
        base_cols, _ = self.choose(case, train)
        g = np.array([c.realised - c.last for c in train])
        A0 = self.design(train, base_cols)
        base = _loo_mae(A0, g)
        scored = sorted((_loo_mae(np.column_stack([A0, v[1:]]), g), n) for n, v in cands.items())
        mae, best = scored[0]
        info = {"inner_loo_mae_without": round(base, 5), "candidates": len(cands), "n_runs": len(train)}
        if not mae < base:  # no observable predicts the other runs' gains better: the suite model
            value, b = self._fit_predict(case, train, base_cols)
            return value, {**info, "observable": None, "features": ["1", *base_cols],
                           "coef": [round(float(v), 5) for v in b]}
        aug_train = [_with_feature(c, best, v) for c, v in zip(train, cands[best][1:])]
        value, b = self._fit_predict(_with_feature(case, best, cands[best][0]), aug_train, (*base_cols, best))
        return value, {**info, "observable": best, "inner_loo_mae": round(mae, 5),
                       "features": ["1", *base_cols, best], "coef": [round(float(v), 5) for v in b]}


def _with_feature(case: Case, name: str, value: float) -> Case:
    from dataclasses import replace

    return replace(case, features={**case.features, name: value})


METHODS: dict[str, type[Method]] = {m.name: m for m in (Last, Curve, Ensemble, Suite, Observables)}


def make(name: str, **params) -> Method:
    """A method by name; unknown names get the list of known ones."""
    from harness.forecast.series import ForecastError

    if name not in METHODS:
        raise ForecastError(f"unknown forecast method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name](**params)
