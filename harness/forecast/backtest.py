"""The honest backtest: hold out each completed run in turn, forecast it from its early points,
score against what it reached.

    >>> bt = backtest(perf, cutoffs=(0.05, 0.1, 0.25, 0.5))
    >>> bt.summary          # per method x cutoff x series (and "all"): MAE, RMSE, coverage, width, ...
    >>> bt.verdict          # one line in plain words

Scores per (method, cutoff), per series and overall ("all"):

- ``mae``, ``rmse``: of point predictions against realised values;
- ``mae_se``: MAE in units of the realised value's own stderr (mean |error| / stderr), where the
  records carry a stderr: ~0.8 is what a perfect forecast of the *expected* score scores
  against a binomially noisy realisation;
- ``coverage``: share of realised values inside the interval; ``width``: mean interval width
  (both over bounded intervals only; ``n_unbounded`` counts the rest, which too few
  calibration runs for the level leave unbounded); ``width_se``: mean width in units of the
  realised value's stderr;
- ``spearman``: rank agreement of predicted vs realised across runs (per series; "all" is the
  mean over series), `scipy.stats.spearmanr`;
- ``n``, ``n_skipped``: forecasts scored and methods' skips (with their reasons in ``forecasts``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.forecast.engine import forecast
from harness.forecast.series import ForecastError, mixed_units

DEFAULT_CUTOFFS = (0.05, 0.1, 0.25, 0.5)
SUMMARY_COLUMNS = ["method", "cutoff", "series", "n", "n_skipped", "mae", "rmse", "mae_se", "coverage", "width",
                   "width_se", "n_unbounded", "spearman"]


@dataclass
class Backtest:
    """A backtest's held-out forecasts, their summary per method/cutoff/series, and the verdict."""
    forecasts: pd.DataFrame  # every held-out forecast (engine.FORECAST_COLUMNS)
    summary: pd.DataFrame  # SUMMARY_COLUMNS
    verdict: str
    level: float


def _spearman(pred: np.ndarray, real: np.ndarray) -> float:
    from scipy import stats

    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(real) == 0:
        return math.nan
    return float(stats.spearmanr(pred, real).statistic)


def score(f: pd.DataFrame) -> dict:
    """The backtest scores of one group of forecasts (see the module docstring)."""
    ok = f[(f["status"] == "ok") & f["realised"].notna()]
    err = (ok["prediction"] - ok["realised"]).to_numpy(float)
    se = ok["realised_stderr"].to_numpy(float)
    good_se = np.isfinite(se) & (se > 0)
    lo, hi = ok["lower"].to_numpy(float), ok["upper"].to_numpy(float)
    real = ok["realised"].to_numpy(float)
    bounded = np.isfinite(lo) & np.isfinite(hi)
    return {
        "n": len(ok), "n_skipped": int((f["status"] == "skipped").sum()),
        "mae": float(np.mean(np.abs(err))) if len(err) else math.nan,
        "rmse": float(np.sqrt(np.mean(err**2))) if len(err) else math.nan,
        "mae_se": float(np.mean(np.abs(err[good_se]) / se[good_se])) if good_se.any() else math.nan,
        # an unbounded interval (too few calibration runs for the level) covers trivially: it is
        # counted in n_unbounded, never as coverage
        "coverage": float(np.mean(((real >= lo) & (real <= hi))[bounded])) if bounded.any() else math.nan,
        "width": float(np.mean((hi - lo)[bounded])) if bounded.any() else math.nan,
        "width_se": float(np.mean(((hi - lo) / se)[bounded & good_se])) if (bounded & good_se).any() else math.nan,
        "n_unbounded": int((~bounded).sum()),
    }


def summarise(forecasts: pd.DataFrame, mixed: str | None = None) -> pd.DataFrame:
    """Scores per (method, cutoff, series) and over all series ("all"). ``mixed`` (the reason
    the series do not share a unit) blanks the overall MAE, RMSE and width: only the scale-free
    scores (in stderr units, coverage, Spearman) are averaged then."""
    rows = []
    for (method, cutoff), g in forecasts.groupby(["method", "cutoff"], sort=False):
        rhos = []
        for series, gs in g.groupby("series", sort=True):
            ok = gs[(gs["status"] == "ok") & gs["realised"].notna()]
            rho = _spearman(ok["prediction"].to_numpy(float), ok["realised"].to_numpy(float))
            rhos.append(rho)
            rows.append({"method": method, "cutoff": cutoff, "series": series, **score(gs), "spearman": rho})
        finite = [r for r in rhos if math.isfinite(r)]
        overall = score(g)
        if mixed:
            overall.update(mae=math.nan, rmse=math.nan, width=math.nan)
        rows.append({"method": method, "cutoff": cutoff, "series": "all", **overall,
                     "spearman": float(np.mean(finite)) if finite else math.nan})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def verdict(summary: pd.DataFrame, level: float, at: float = 0.1, mixed: str | None = None) -> str:
    """One line: which method wins at cutoff ``at`` (else the nearest), whether it beats
    ``last``, whether ``observables`` adds over ``suite``, and the coverage of the winner.
    With ``mixed`` units the ranking is by MAE in stderr units, and the line says so."""
    overall = summary[(summary["series"] == "all") & (summary["n"] > 0)]
    key, unit = ("mae_se", " stderr") if mixed else ("mae", "")
    if mixed:
        overall = overall[overall["mae_se"].notna()]
        if overall.empty:
            return f"no overall ranking: {mixed} and no stderr puts them on one scale; read the per-series rows"
    if overall.empty:
        return "no forecast could be scored: no method produced a forecast for a completed run"
    cutoffs = sorted(overall["cutoff"].unique(), key=lambda c: abs(c - at))
    c = cutoffs[0]
    at_c = overall[overall["cutoff"] == c].sort_values(key)
    best = at_c.iloc[0]
    if math.isfinite(best["coverage"]):
        width = f"{best['width_se']:.3g} stderr" if mixed else f"{best['width']:.3g}"
        cov = (f"coverage {best['coverage']:.2f} of {level:.0%} intervals, mean width {width}"
               + (f", {int(best['n_unbounded'])} unbounded" if best["n_unbounded"] else ""))
    else:
        cov = f"{level:.0%} intervals unbounded: too few completed runs to calibrate"
    parts = [f"at cutoff {c:g}: {best['method']} wins (MAE {best[key]:.3g}{unit}, {cov})"]
    last = at_c[at_c["method"] == "last"]
    if not last.empty and best["method"] != "last":
        parts.append(f"last has MAE {last.iloc[0][key]:.3g}{unit}")
    elif best["method"] == "last":
        parts.append("no method beats the value at the cutoff")
    obs, suite = at_c[at_c["method"] == "observables"], at_c[at_c["method"] == "suite"]
    if not obs.empty and not suite.empty:
        o, s = obs.iloc[0][key], suite.iloc[0][key]
        parts.append(("observables add over suite" if o < s else "observables do not add over suite")
                     + f" (MAE {o:.3g} vs {s:.3g}{unit})")
    elif not suite.empty:
        parts.append("observables were not scored (skipped: see the forecasts)")
    if mixed:
        parts.append(f"overall MAE in stderr units because {mixed}")
    return "; ".join(parts)


def backtest(perf: pd.DataFrame, *, cutoffs: Sequence[float] = DEFAULT_CUTOFFS, level: float = 0.9,
             methods: Sequence[str] | None = None, **kw) -> Backtest:
    """Forecast each completed run at each cutoff, holding it out; score (see module docstring)."""
    frames = []
    for c in cutoffs:
        fc = forecast(perf, cutoff=c, level=level, **({"methods": methods} if methods else {}), **kw)
        frames.append(fc[fc["realised"].notna()])
    forecasts = pd.concat(frames, ignore_index=True)
    if forecasts.empty:
        raise ForecastError("no run reached the target step: nothing to backtest (set --target-step)")
    mixed = mixed_units(perf)
    summary = summarise(forecasts, mixed)
    return Backtest(forecasts, summary, verdict(summary, level, mixed=mixed), level)
