"""One curve per training run for trajectory metrics: which series, from where, and what was dropped.

Trajectory metrics that fit a curve over training (a loss-deceleration fit, a time-scaling
fit) all need the same thing: the run's curve as ``(step, value)`` sorted by step, from a
series the user names, with every dropped row counted. This module is that accessor, so every
such metric resolves ``source`` the same way and says the same things about bad rows.

**The curve selector** ``metric:measure[:task]`` names a recorded series: the ``ok`` records
of that metric and measure for this run (``model_id``), without a layer, of one task. The
default ``loss:loss`` is the held-out loss the ``loss`` metric records at each checkpoint;
``lm_eval:perplexity:lambada_openai`` would be a downstream perplexity series. A series with
several tasks needs the task named.

**Precedence** (``source``):

* ``records``: the selected series only;
* ``history``: the family's training log only (``ctx.history``, its ``loss`` column);
* ``auto``: the selected series when it has at least ``min_points`` usable points (the series
  this run measured, under this run's configuration); else the family's training log when it
  has any usable point; else the series with the points it has (the metric then says how few).

**Cleaning** (both sources): rows without a numeric step are dropped; NaN, infinite and
(``positive=True``, for log-space fits) non-positive values are dropped; then a step with more
than one usable row keeps its last (a resumed run re-logs steps); rows whose step is lower than
the one before are counted as restarts. Counts a family already took out while reading its log
(``history.attrs["dropped"]``, same keys) are added. `Curve.warning` says all of it in one
line; a curve that is empty says why in `Curve.reason` (e.g. "all 40 values are <= 0").

Example::

    curve = resolve_curve(ctx, source="auto", selector=CurveSelector.parse("loss:loss"), min_points=5)
    if curve.empty:
        yield Measurement.skipped("alpha", curve.reason)
    steps, loss = curve.step, curve.value
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.api import ParameterError

__all__ = ["CurveSelector", "Curve", "SOURCES", "DROP_KEYS", "clean_series", "record_series", "resolve_curve",
           "describe_drops"]

SOURCES = ("auto", "records", "history")

#: dropped-row counters, in the order `describe_drops` words them
DROP_KEYS = ("no_step", "nan", "inf", "non_positive", "repeated_step", "restarts")

_WORDS = {
    "no_step": "without a numeric step",
    "nan": "with a missing or NaN value",
    "inf": "with an infinite value",
    "non_positive": "with a value <= 0 (no logarithm)",
    "repeated_step": "repeating an earlier step (kept the last)",
}


@dataclass(frozen=True)
class CurveSelector:
    """A recorded series: ``metric:measure[:task]`` (see the module docstring)."""

    metric: str
    measure: str
    task: str | None = None

    @classmethod
    def parse(cls, text: Any, key: str = "curve") -> CurveSelector:
        """``"loss:loss"``, ``"lm_eval:perplexity:lambada_openai"``; a bare ``"loss"`` means
        ``loss:loss``. Raises `ParameterError` naming ``key`` on anything else."""
        if isinstance(text, CurveSelector):
            return text
        parts = str(text).split(":") if isinstance(text, str) else []
        if len(parts) == 1 and parts[0]:
            parts = [parts[0], parts[0]]
        if not 2 <= len(parts) <= 3 or not all(p.strip() for p in parts):
            raise ParameterError(key, text, "metric:measure or metric:measure:task (e.g. loss:loss)")
        metric, measure, *task = (p.strip() for p in parts)
        return cls(metric, measure, task[0] if task else None)

    def __str__(self) -> str:
        return ":".join([self.metric, self.measure] + ([self.task] if self.task else []))


@dataclass
class Curve:
    """A run's curve: ``step`` ascending and unique, ``value`` finite (and > 0 when asked),
    ``tokens_seen``/``learning_rate`` aligned (NaN where unknown)."""

    step: np.ndarray
    value: np.ndarray
    tokens_seen: np.ndarray
    learning_rate: np.ndarray
    source: str  # "records" | "history" | "none"
    what: str  # in words: "the loss:loss records", "the training log"
    n_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    reason: str | None = None

    @property
    def empty(self) -> bool:
        """True when no usable point is left after cleaning."""
        return len(self.step) == 0

    def __len__(self) -> int:
        return len(self.step)

    def warning(self) -> str | None:
        """One line on every dropped row, or None when nothing was dropped."""
        text = describe_drops(self.dropped, self.n_rows)
        return f"{self.what}: {text}" if text else None

    def summary(self) -> dict[str, Any]:
        """JSON-able provenance: source, rows read, rows kept, drop counts."""
        return {"source": self.source, "what": self.what, "n_rows": int(self.n_rows), "n_used": int(len(self)),
                "dropped": {k: int(v) for k, v in self.dropped.items() if v}}


def describe_drops(dropped: Mapping[str, int], n_rows: int | None = None) -> str | None:
    """``"dropped 3 of 200 rows: 2 with a NaN value, 1 with a value <= 0; 1 restart (step went back)"``."""
    parts = [f"{int(dropped[k])} {_WORDS[k]}" for k in DROP_KEYS if k in _WORDS and dropped.get(k)]
    total = sum(int(dropped.get(k, 0)) for k in _WORDS)
    out = []
    if parts:
        of = f" of {n_rows}" if n_rows else ""
        out.append(f"dropped {total}{of} rows: " + ", ".join(parts))
    if dropped.get("restarts"):
        k = int(dropped["restarts"])
        out.append(f"{k} restart{'s' if k > 1 else ''} (step went back; later rows win)")
    return "; ".join(out) or None


def clean_series(frame: pd.DataFrame, value: str, *, positive: bool = False,
                 extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame[["step", value, *extra]]`` cleaned as the module docstring says, sorted by
    step, with the counts of what was dropped. O(n) memory (a few columns of the input)."""
    cols = ["step", value] + [c for c in extra if c in frame.columns]
    arr = {c: _numeric(frame[c]) for c in cols}
    counts = dict.fromkeys(DROP_KEYS, 0)
    s, v = arr["step"], arr[value]
    has_step = np.isfinite(s)
    counts["no_step"] = int((~has_step).sum())
    s_ok = s[has_step]
    counts["restarts"] = int((np.diff(s_ok) < 0).sum()) if len(s_ok) > 1 else 0
    nan, inf = np.isnan(v) & has_step, np.isinf(v) & has_step
    counts["nan"], counts["inf"] = int(nan.sum()), int(inf.sum())
    keep = has_step & ~np.isnan(v) & ~np.isinf(v)
    if positive:
        nonpos = keep & (v <= 0)
        counts["non_positive"] = int(nonpos.sum())
        keep &= ~nonpos
    rows = np.flatnonzero(keep)
    # one row per step, the last usable one (a re-logged step: the later row wins), sorted by step
    _, first_from_end = np.unique(s[rows][::-1], return_index=True)
    last = rows[len(rows) - 1 - first_from_end]
    counts["repeated_step"] = int(len(rows) - len(last))
    out = pd.DataFrame({c: arr[c][last] for c in cols})
    return out, counts


def _numeric(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=float, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def record_series(records: pd.DataFrame | None, selector: CurveSelector, model_id: str | None,
                  param: str = "curve") -> pd.DataFrame:
    """The selected series' rows (``ok``, no layer, this ``model_id``, one task) in the
    record schema. Several tasks without one named raise `ParameterError` naming ``param``."""
    if records is None or len(records) == 0 or "metric" not in records.columns:
        return pd.DataFrame(columns=["step", "value", "tokens_seen"])
    m = (records["metric"] == selector.metric) & (records["measure"] == selector.measure)
    if "status" in records.columns:
        m &= records["status"] == "ok"
    if model_id is not None and "model_id" in records.columns:
        m &= records["model_id"] == model_id
    if "layer" in records.columns:
        m &= records["layer"].isna()
    sel = records[m]
    if "task" in sel.columns:
        if selector.task is not None:
            sel = sel[sel["task"] == selector.task]
        else:
            tasks = sorted({str(t) for t in sel["task"].dropna().unique()})
            if len(tasks) > 1 or (tasks and sel["task"].isna().any()):
                raise ParameterError(
                    param, str(selector),
                    f"one task of the {selector.metric}:{selector.measure} records of {model_id!r}, which hold "
                    f"several: {tasks} (e.g. {selector.metric}:{selector.measure}:{tasks[0]})")
    return sel


def _empty(source: str, what: str, reason: str, n_rows: int = 0, dropped: dict[str, int] | None = None) -> Curve:
    z = np.array([], dtype=float)
    return Curve(z, z, z, z, source, what, n_rows, dict(dropped or {}), reason)


def _from_frame(df: pd.DataFrame, value: str, source: str, what: str, positive: bool,
                prior: Mapping[str, int] | None = None) -> Curve:
    n_rows = len(df) + int(sum((prior or {}).get(k, 0) for k in _WORDS))
    clean, counts = clean_series(df, value, positive=positive, extra=("tokens_seen", "learning_rate"))
    for k, v in (prior or {}).items():
        counts[k] = counts.get(k, 0) + int(v)

    def col(name: str) -> np.ndarray:
        return clean[name].to_numpy(dtype=float) if name in clean.columns else np.full(len(clean), np.nan)

    curve = Curve(col("step"), col(value), col("tokens_seen"), col("learning_rate"), source, what, n_rows, counts)
    if curve.empty:
        if n_rows == 0:
            curve.reason = f"{what}: no rows"
        elif positive and counts.get("non_positive"):
            vals = pd.to_numeric(df[value], errors="coerce")
            finite = vals[np.isfinite(vals.to_numpy(dtype=float))]
            curve.reason = (f"{what}: all {counts['non_positive']} finite values are <= 0 (max {finite.max():.4g}); "
                            "the fit needs a positive loss: is this a log-likelihood, a reward or a "
                            "log-loss rather than a loss?")
        else:
            curve.reason = f"{what}: no usable rows ({describe_drops(counts, n_rows)})"
    return curve


def history_curve(history: pd.DataFrame | None, *, positive: bool = True, column: str = "loss") -> Curve:
    """The family's training log as a `Curve` (its ``column``), with the family's own drop
    counts (``history.attrs["dropped"]``) added."""
    what = "the training log"
    if history is None or len(history) == 0:
        return _empty("history", what, "the family has no training log for this run")
    if "step" not in history.columns or column not in history.columns:
        return _empty("history", what, f"{what} has no step/{column} columns (columns: {list(history.columns)})",
                      n_rows=len(history))
    prior = dict(getattr(history, "attrs", {}).get("dropped") or {})
    return _from_frame(history, column, "history", what, positive, prior)


def records_curve(records: pd.DataFrame | None, selector: CurveSelector, model_id: str | None, *,
                  positive: bool = True, param: str = "curve") -> Curve:
    """The selected record series as a `Curve`."""
    what = f"the {selector} records"
    sel = record_series(records, selector, model_id, param)
    if len(sel) == 0:
        return _empty("records", what, f"no ok {selector} records for {model_id!r}: run metric={selector.metric} "
                      "in the same run, or name another series")
    return _from_frame(sel, "value", "records", what, positive)


def resolve_curve(ctx: Any, *, source: str = "auto", selector: CurveSelector | str = "loss:loss",
                  min_points: int = 1, positive: bool = True, param: str = "curve") -> Curve:
    """The run's curve by the documented precedence (module docstring). ``ctx`` is a
    trajectory context (``records``, ``history``, ``model_id``)."""
    if source not in SOURCES:
        raise ParameterError("source", source, ", ".join(SOURCES))
    selector = CurveSelector.parse(selector, param)
    records, history, model_id = getattr(ctx, "records", None), getattr(ctx, "history", None), ctx.model_id
    if source == "records":
        return records_curve(records, selector, model_id, positive=positive, param=param)
    if source == "history":
        return history_curve(history, positive=positive)
    rec = records_curve(records, selector, model_id, positive=positive, param=param)
    if len(rec) >= min_points:
        return rec
    hist = history_curve(history, positive=positive)
    if not hist.empty:
        return hist
    if not rec.empty:
        return rec
    reason = f"{rec.reason}; and {hist.reason}" if rec.reason and hist.reason else (rec.reason or hist.reason)
    out = rec if rec.n_rows >= hist.n_rows else hist
    out.reason = reason
    return out
