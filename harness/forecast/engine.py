"""Forecast every performance series of every run, with leave-one-run-out conformal intervals.

    >>> perf = performance_series(frame)                     # harness.forecast.series
    >>> out = forecast(perf, methods=["last", "suite"], cutoff=0.1)
    >>> out[["run", "series", "method", "prediction", "lower", "upper", "status", "reason"]]

``cutoff`` is a fraction of the target step (``0 < cutoff <= 1``) or a step (``> 1``); the
target step defaults to the last step any run of the series reached (a run that has not reached
it is forecast but cannot calibrate or be scored). A run *completes* a series when it has a
value at the target step; only completed runs calibrate intervals and teach cross-run methods.

Intervals: for target run r, every other completed run j is a calibration point. The method is
refitted without r and j, predicts j (its residual R_j) and r (``mu_{-j}(r)``), and the
jackknife+ interval (`harness.forecast.conformal`) combines them. Residuals are pooled over
series (``pool="all"``, the default: with 8 runs a single series has too few for a 90% interval)
after dividing each by its series' scale (``scale="residual"``: the mean absolute calibration
residual of that series over the calibration runs; ``"stderr"``: the published/recorded stderr
at the cutoff; ``"none"``). The target's own realised value is never used for its forecast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.forecast.conformal import jackknife_plus
from harness.forecast.methods import Case, Method, Skip, make
from harness.forecast.series import ForecastError

FORECAST_COLUMNS = ["run", "series", "method", "cutoff", "cutoff_step", "target_step", "n_points", "prediction",
                    "lower", "upper", "level", "realised", "realised_stderr", "status", "reason", "n_calibration",
                    "inputs"]


def cutoff_step(cutoff: float, target: float) -> float:
    """The cutoff as a step: a fraction (<= 1) of the target step, or a step itself."""
    if not (cutoff > 0):
        raise ForecastError(f"cutoff must be > 0 (a fraction of the target step, or a step), got {cutoff}")
    return float(cutoff * target) if cutoff <= 1 else float(cutoff)


def build_cases(perf: pd.DataFrame, cutoff: float, target_step: float | None = None,
                features: pd.DataFrame | None = None) -> dict[str, dict[str, Case]]:
    """``{series: {run: Case}}`` at one cutoff; features are the observables' last values at or
    before each run's cutoff. (numpy, not pandas, per group: the backtest builds these often.)"""
    out: dict[str, dict[str, Case]] = {}
    feats_by_run = _feature_arrays(features)
    series_col = perf["series"].astype(str).to_numpy()
    run_col = perf["run"].astype(str).to_numpy()
    num = perf[["step", "value", "stderr", "n_params"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    order = np.lexsort((num[:, 0], run_col, series_col))
    series_col, run_col, num = series_col[order], run_col[order], num[order]
    for series in dict.fromkeys(series_col):
        in_s = series_col == series
        s_runs, s_num = run_col[in_s], num[in_s]
        target = float(target_step) if target_step is not None else float(np.nanmax(s_num[:, 0]))
        c_step = cutoff_step(cutoff, target)
        if c_step >= target:
            raise ForecastError(f"cutoff step {c_step:g} is not before the target step {target:g} ({series})")
        cases = {}
        for run in dict.fromkeys(s_runs):
            r = s_num[s_runs == run]
            early = r[(r[:, 0] > 0) & (r[:, 0] <= c_step)]
            at_t = r[r[:, 0] == target]
            n = r[np.isfinite(r[:, 3]), 3]
            cases[run] = Case(
                run=run, series=str(series), cutoff=c_step, target=target,
                steps=early[:, 0].copy(), values=early[:, 1].copy(), stderr=early[:, 2].copy(),
                log_n=float(np.log(n[0])) if len(n) and n[0] > 0 else math.nan,
                realised=float(at_t[0, 1]) if len(at_t) else None,
                realised_stderr=float(at_t[0, 2]) if len(at_t) else math.nan,
                features=_features_at(feats_by_run.get(run), c_step))
        out[str(series)] = cases
    return out


def _feature_arrays(features: pd.DataFrame | None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per run: (series labels, steps, values) of the observables, sorted by step."""
    if features is None or features.empty:
        return {}
    f = features[features["step"] > 0].sort_values("step", kind="mergesort")
    return {str(run): (g["series"].astype(str).to_numpy(), g["step"].to_numpy(float), g["value"].to_numpy(float))
            for run, g in f.groupby("run", sort=False)}


def _features_at(arrays, c_step: float) -> dict[str, float]:
    """Each observable's last value at or before the cutoff step."""
    if arrays is None:
        return {}
    labels, steps, values = arrays
    keep = steps <= c_step
    return dict(zip(labels[keep].tolist(), values[keep].tolist()))  # later steps overwrite earlier


class _Cache:
    """Predictions keyed by (run, excluded runs): each (method, series) refit happens once."""

    def __init__(self, method: Method, cases: dict[str, Case], completed: list[str]):
        self.method, self.cases, self.completed = method, cases, completed
        self.memo: dict[tuple[str, frozenset], tuple[float, dict] | Skip] = {}

    def get(self, run: str, excluded: frozenset) -> tuple[float, dict] | Skip:
        key = (run, excluded if self.method.cross_run else frozenset())
        if key not in self.memo:
            train = [self.cases[j] for j in self.completed if j != run and j not in excluded]
            try:
                self.memo[key] = self.method.predict(self.cases[run], train)
            except Skip as exc:
                self.memo[key] = exc
        return self.memo[key]


def _scale_of(scale: str, case: Case, resid: list[float], fallback_se: float) -> float:
    if scale == "none":
        return 1.0
    if scale == "stderr":
        s = case.last_stderr
        s = s if math.isfinite(s) and s > 0 else fallback_se
        return s if math.isfinite(s) and s > 0 else 1.0
    if scale == "residual":
        m = float(np.mean(np.abs(resid))) if resid else math.nan
        return m if math.isfinite(m) and m > 0 else 1.0
    raise ForecastError(f"unknown interval scale {scale!r}; choose from residual, stderr, none")


def forecast(perf: pd.DataFrame, *, methods: Sequence[str | Method] = ("last", "curve", "ensemble", "suite", "observables"),
             cutoff: float = 0.1, target_step: float | None = None, level: float = 0.9,
             features: pd.DataFrame | None = None, scale: str = "residual", pool: str = "all",
             runs: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (method, series, run): point prediction, interval, status and inputs.

    ``perf`` is `harness.forecast.series.performance_series` output; ``features`` the
    observables (`observable_series`) for the ``observables`` method; ``runs`` limits the runs
    forecast (all others still calibrate). See the module docstring for the intervals.
    """
    if not 0 < level < 1:
        raise ForecastError(f"level must be in (0, 1), got {level}")
    if pool not in ("all", "series"):
        raise ForecastError(f"unknown pool {pool!r}; choose from all, series")
    alpha = 1 - level
    all_cases = build_cases(perf, cutoff, target_step, features)
    rows: list[dict] = []
    for m in methods:
        method = make(m) if isinstance(m, str) else m
        # per series: caches, completed runs
        per_series = {}
        for series, cases in all_cases.items():
            completed = sorted(r for r, c in cases.items() if c.realised is not None and math.isfinite(c.realised))
            per_series[series] = (cases, completed, _Cache(method, cases, completed))
        targets_by_series = {s: sorted(c) if runs is None else [r for r in sorted(c) if r in set(runs)]
                             for s, (c, _, _) in per_series.items()}
        # calibration material for each (series, target run)
        calib: dict[tuple[str, str], dict] = {}
        for series, (cases, completed, cache) in per_series.items():
            se_all = np.array([c.last_stderr for c in cases.values()])
            se_all = se_all[np.isfinite(se_all) & (se_all > 0)]
            fallback_se = float(np.median(se_all)) if len(se_all) else math.nan
            for r in targets_by_series[series]:
                main = cache.get(r, frozenset({r}))
                mu_minus, resid, cal_runs = [], [], []
                for j in completed:
                    if j == r:
                        continue
                    at_j = cache.get(j, frozenset({r, j}))
                    at_r = cache.get(r, frozenset({r, j}))
                    if isinstance(at_j, Skip) or isinstance(at_r, Skip):
                        continue
                    mu_minus.append(at_r[0])
                    resid.append(cases[j].realised - at_j[0])
                    cal_runs.append(j)
                calib[(series, r)] = {"main": main, "mu_minus": mu_minus, "resid": resid, "runs": cal_runs,
                                      "case": cases[r],
                                      "fallback_se": fallback_se}
        # normalised scores, then intervals (pooled over series of the same target run)
        for (series, r), c in calib.items():
            c["scale"] = _scale_of(scale, c["case"], c["resid"], c["fallback_se"])
            c["scores"] = [abs(e) / c["scale"] for e in c["resid"]]
        for (series, r), c in calib.items():
            case, main = c["case"], c["main"]
            row = {"run": r, "series": series, "method": method.name, "cutoff": cutoff, "cutoff_step": case.cutoff,
                   "target_step": case.target, "n_points": len(case.values), "level": level,
                   "realised": case.realised, "realised_stderr": case.realised_stderr}
            if isinstance(main, Skip):
                rows.append({**row, "prediction": math.nan, "lower": math.nan, "upper": math.nan, "status": "skipped",
                             "reason": str(main), "n_calibration": 0, "inputs": None})
                continue
            if pool == "series":
                mm, ss = c["mu_minus"], c["scores"]
            else:  # pair the target series' leave-j-out prediction with run j's scores of every series
                mm, ss = [], []
                by_j = dict(zip(c["runs"], c["mu_minus"]))
                for s2 in all_cases:  # run j's score on series s2 pairs with mu_{-j}(r) of this series
                    c2 = calib.get((s2, r))
                    if c2 is None:
                        continue
                    for j, sc in zip(c2["runs"], c2["scores"]):
                        if j in by_j:
                            mm.append(by_j[j])
                            ss.append(sc)
            lo, hi = jackknife_plus(np.array(mm), np.array(ss), alpha, c["scale"])
            reason = None
            if not (math.isfinite(lo) and math.isfinite(hi)):
                reason = f"interval unbounded: {len(ss)} calibration residuals are too few for level {level:g}"
            rows.append({**row, "prediction": main[0], "lower": lo, "upper": hi, "status": "ok", "reason": reason,
                         "n_calibration": len(ss), "inputs": json.dumps(main[1], sort_keys=True, default=float)})
    return pd.DataFrame(rows, columns=FORECAST_COLUMNS)

