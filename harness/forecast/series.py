"""Tidy performance series from records: the one input every forecast method reads.

    >>> perf = performance_series(harness.load_results("results/run1"))
    >>> perf.columns
    ['run', 'family', 'model_id', 'size', 'n_params', 'series', 'step', 'tokens', 'value', 'stderr',
     'higher_is_better', 'kind']

One row per run x series x step. A *series* is one (metric, measure, task) at model level
(``layer`` empty), labelled as the report labels it (``lambada_openai/acc``, ``loss.loss``). A
*run* is one training run: ``family/model_id``.

Which series are *performance* is read from the records, never from a metric's name: the
``performance`` column that metrics fill from their declaration (``Metric.performance``). Where
records carry no declaration (older runs), pass selectors: globs ``metric:measure[:task]`` as in
``harness report --performance``. Selectors always win over the declaration.

Mixed configurations are refused, not averaged: two different values for the same run, series
and step raise `ForecastError` naming them.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.api import HarnessError

SERIES_COLUMNS = ["run", "family", "model_id", "size", "n_params", "series", "step", "tokens", "value", "stderr",
                  "higher_is_better", "unit", "kind"]


class ForecastError(HarnessError):
    """The records cannot be forecast as asked (no series, mixed configurations, bad cutoff)."""


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""


def series_label(metric, measure, task) -> str:
    """``task/measure`` for task scores, ``metric.measure`` otherwise (the report's labels)."""
    return f"{task}/{measure}" if _present(task) else f"{metric}.{measure}"


def matches(metric, measure, task, patterns: Sequence[str]) -> bool:
    """True when ``metric:measure:task`` matches any glob (a 2-part pattern ignores the task)."""
    vals = [str(metric), str(measure), str(task) if _present(task) else ""]
    for pat in patterns:
        parts = pat.split(":")
        if all(fnmatch.fnmatchcase(v, p) for v, p in zip(vals, parts)):
            return True
    return False


def _model_level(frame: pd.DataFrame) -> pd.DataFrame:
    need = {"status", "value", "step", "model_id", "metric", "measure"}
    missing = need - set(frame.columns)
    if missing:
        raise ForecastError(f"records lack column(s) {', '.join(sorted(missing))}")
    f = frame[(frame["status"] == "ok") & frame["value"].notna() & frame["step"].notna() & frame["model_id"].notna()]
    if "layer" in f:
        f = f[f["layer"].isna() | (f["layer"].astype(str) == "")]
    return f


def tidy(frame: pd.DataFrame, selectors: Sequence[str] | None = None, *, performance: bool | None = True,
         exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Model-level series of ``frame`` as tidy rows (`SERIES_COLUMNS`).

    ``selectors`` (globs) choose the series; without them ``performance=True`` keeps the
    declared performance series, ``performance=False`` the declared observables (no
    declaration: nothing), ``None`` everything. ``exclude`` drops series by label.
    """
    f = _model_level(frame)
    if selectors:
        keep = [matches(m, me, t, selectors) for m, me, t in zip(f["metric"], f["measure"], f.get("task", [None] * len(f)))]
        f = f[np.asarray(keep, bool)] if len(f) else f
    elif performance is not None:
        if "performance" not in f.columns:
            f = f.iloc[0:0] if performance else f
        else:
            declared = f["performance"].notna() & (f["performance"].astype(str) != "")
            f = f[declared] if performance else f[~declared]
    if f.empty:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    task = f["task"] if "task" in f else pd.Series([None] * len(f), index=f.index)
    out = pd.DataFrame({
        "family": f.get("family", pd.Series("", index=f.index)).fillna("").astype(str),
        "model_id": f["model_id"].astype(str),
        "size": f.get("size", pd.Series(None, index=f.index)),
        "n_params": pd.to_numeric(f.get("n_params", pd.Series(np.nan, index=f.index)), errors="coerce"),
        "series": [series_label(m, me, t) for m, me, t in zip(f["metric"], f["measure"], task)],
        "step": pd.to_numeric(f["step"], errors="coerce").astype(float),
        "tokens": pd.to_numeric(f.get("tokens_seen", pd.Series(np.nan, index=f.index)), errors="coerce"),
        "value": pd.to_numeric(f["value"], errors="coerce").astype(float),
        "stderr": pd.to_numeric(f.get("stderr", pd.Series(np.nan, index=f.index)), errors="coerce"),
        "higher_is_better": f.get("higher_is_better", pd.Series(None, index=f.index)),
        "unit": f.get("unit", pd.Series(None, index=f.index)),
        "kind": f.get("performance", pd.Series(None, index=f.index)),
    })
    out.insert(0, "run", [f"{a}/{b}" if a else b for a, b in zip(out["family"], out["model_id"])])
    if exclude:
        out = out[~out["series"].isin(set(exclude))]
    out = out.drop_duplicates(["run", "series", "step", "value"])
    dup = out.duplicated(["run", "series", "step"], keep=False)
    if dup.any():
        r = out[dup].iloc[0]
        raise ForecastError(
            f"mixed configurations: {int(dup.sum())} rows disagree for the same run, series and step "
            f"(e.g. {r['run']} {r['series']} step {int(r['step'])}); forecast one configuration at a time "
            "(pass one run directory, or select series)")
    return out.sort_values(["run", "series", "step"], kind="mergesort").reset_index(drop=True)[SERIES_COLUMNS]


def performance_series(frame: pd.DataFrame, selectors: Sequence[str] | None = None) -> pd.DataFrame:
    """The performance series to forecast (declared ones, or those ``selectors`` choose).

    Raises `ForecastError` with the reason when there are none.
    """
    out = tidy(frame, selectors, performance=True)
    if out.empty:
        if selectors:
            raise ForecastError(f"no model-level series match {', '.join(selectors)}")
        raise ForecastError("no performance series among the records: no metric declared one "
                            "(pass --series GLOB, e.g. 'lm_eval:acc:*' or 'loss:loss')")
    return out


def observable_series(frame: pd.DataFrame, selectors: Sequence[str] | None = None, *,
                      targets: Sequence[str] = ()) -> pd.DataFrame:
    """Candidate features for the ``observables`` method: the selected series, else every
    declared observable plus loss-kind performance series; the forecast targets excluded."""
    if selectors:
        return tidy(frame, selectors, performance=None, exclude=targets)
    obs = tidy(frame, None, performance=False, exclude=targets)
    perf = tidy(frame, None, performance=True, exclude=targets)
    perf = perf[perf["kind"].astype(str) == "loss"]
    return pd.concat([obs, perf], ignore_index=True) if not perf.empty else obs


def mixed_units(perf: pd.DataFrame) -> str | None:
    """Why the series cannot share one MAE (None when they can): an average error over
    accuracies and perplexities would be a number that misleads."""
    if perf.empty or perf["series"].nunique() < 2:
        return None
    g = perf.groupby("series")
    hib = g["higher_is_better"].first().dropna() if "higher_is_better" in perf else pd.Series(dtype=object)
    if hib.astype(bool).nunique() > 1:
        return "higher- and lower-is-better series are mixed"
    units = g["unit"].first().dropna() if "unit" in perf else pd.Series(dtype=object)
    units = units[units.astype(str) != ""]
    if units.nunique() > 1:
        return f"series in different units ({', '.join(sorted(map(str, units.unique())))})"
    mag = g["value"].apply(lambda v: float(np.nanmedian(np.abs(v.to_numpy(float)))))
    if mag.min() > 0 and mag.max() / mag.min() > 10:
        return "series on scales more than 10x apart"
    return None
