"""Tables derived from records: the per-checkpoint trajectories and the checkpoint-level
relation table (pure functions). The ranking leaderboard is `harness.report.ranking`, the step-
and model-level relations `harness.report.levels`.

    >>> frame = harness.load_results("results/run1")
    >>> tr = trajectories(frame)            # Table: .data (numeric), .display (strings)
    >>> rel = relation(frame)                # performance = the measures metrics declared

Records follow harness/records.py. A *series* is one (metric, measure, task) at model level
(``layer`` empty); it becomes a column and a relation-table observable or performance measure.
Which series are *performance* is declared by the metric that produced them (the records'
``performance`` column); ``performance=[...]`` selectors override it. Selectors are globs
``metric:measure[:task]`` (``loss:loss``, ``*:acc:pydoc_mc``).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report import stats as S

logger = logging.getLogger(__name__)

ROW_KEYS = ["family", "size", "model_id", "checkpoint", "step"]
SERIES_KEYS = ["metric", "measure", "task"]
ARROWS = {True: "↑", False: "↓"}


@dataclass
class Table:
    """A derived table: numbers for files, strings for display, and what a reader must know."""

    name: str
    data: pd.DataFrame  # numeric / machine-readable (CSV, Parquet)
    display: pd.DataFrame  # formatted strings (terminal, Markdown, HTML)
    footer: list[str] = field(default_factory=list)
    note: str | None = None  # why the table is empty or partial

    @property
    def empty(self) -> bool:
        """Whether the table has no rows."""
        return self.data.empty


# ---- helpers --------------------------------------------------------------------------


def series_label(metric: str, measure: str, task: str | None) -> str:
    """Display name of a series: ``pydoc_mc/acc`` for tasks, ``loss.loss`` otherwise."""
    return f"{task}/{measure}" if _present(task) else f"{metric}.{measure}"


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""


def matches(metric: str, measure: str, task: str | None, patterns: Sequence[str]) -> bool:
    """True when ``metric:measure:task`` matches any glob (a 2-part pattern ignores task)."""
    for pat in patterns:
        parts = pat.split(":")
        vals = [metric, measure, task or ""]
        if all(fnmatch.fnmatchcase(str(v), p) for v, p in zip(vals, parts)):
            return True
    return False


def _kind_order(kind) -> int:
    from harness.api import PERFORMANCE_KINDS

    return PERFORMANCE_KINDS.index(kind) if kind in PERFORMANCE_KINDS else len(PERFORMANCE_KINDS)


def performance_series(frame: pd.DataFrame, selectors: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """The performance series among ``frame``'s model-level records, best kind first.

    With ``selectors`` (globs ``metric:measure[:task]``) exactly the matching series; without,
    those whose records a metric declared as performance (``performance`` column): ``primary``
    first, then ``score`` (downstream task scores), then ``loss``; by name within a kind.
    """
    f = model_level(frame)
    if f.empty:
        return []
    task = f["task"].fillna("")
    kinds = f["performance"] if "performance" in f else pd.Series(None, index=f.index, dtype=object)
    keyed = pd.DataFrame({"metric": f["metric"], "measure": f["measure"], "task": task, "kind": kinds})
    keyed["kind"] = keyed["kind"].where(keyed["kind"].map(lambda k: isinstance(k, str)), None)
    first_kind = keyed.groupby(["metric", "measure", "task"])["kind"].agg(
        lambda k: min(k.dropna(), key=_kind_order) if k.notna().any() else "")
    out = []
    for (metric, measure, t), kind in first_kind.items():
        kind = kind if isinstance(kind, str) and kind else None
        if selectors:
            if matches(metric, measure, t, selectors):
                out.append(((_kind_order(kind)), (metric, measure, t)))
        elif kind is not None:
            out.append((_kind_order(kind), (metric, measure, t)))
    return [s for _, s in sorted(out)]


def fmt_value(v: float | None, se: float | None = None) -> str:
    """A value (and its stderr) in 4 significant digits, blank for None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    s = f"{v:.4g}"
    if se is not None and not (isinstance(se, float) and math.isnan(se)):
        s += f" ± {se:.2g}"
    return s


def model_level(frame: pd.DataFrame) -> pd.DataFrame:
    """ok records at model level (no layer) that sit at a checkpoint (have model_id and step)."""
    if frame.empty:
        return frame
    f = frame[(frame["status"] == "ok") & frame["layer"].isna() & frame["step"].notna() & frame["model_id"].notna()]
    f = f[f["value"].notna()]
    return f


def _flagged(warning) -> bool:
    """A record whose metric flagged its value (warning ``flagged: ...``, e.g. no power law)."""
    return isinstance(warning, str) and warning.lower().startswith("flagged")


def _latest(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per key (the last in store order: a re-run supersedes an earlier run)."""
    return frame.drop_duplicates(keys, keep="last")


def provenance_footer(frame: pd.DataFrame) -> list[str]:
    """Runs, git sha(s) and config hashes the table was computed from."""
    if frame.empty:
        return []

    def uniq(col: str) -> list[str]:
        if col not in frame:
            return []
        return sorted({str(v) for v in frame[col].dropna().unique()})

    lines = []
    runs = uniq("run_id")
    lines.append(f"runs: {', '.join(runs) or 'unknown'}")
    shas = uniq("git_sha")
    dirty = bool(frame["git_dirty"].fillna(False).astype(bool).any()) if "git_dirty" in frame else False
    lines.append(f"git: {', '.join(s[:10] for s in shas) or 'unknown'}{' (dirty)' if dirty else ''}")
    for col, label in (("model_config_hash", "model config"), ("metric_config_hash", "metric config")):
        vals = uniq(col)
        if vals:
            lines.append(f"{label}: {', '.join(vals[:8])}{' ...' if len(vals) > 8 else ''}")
    counts = frame["status"].value_counts().to_dict() if "status" in frame else {}
    lines.append("records: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("ok", "skipped", "error")))
    return lines


# ---- trajectories (the per-checkpoint long table) ----------------------------------------


def trajectories(frame: pd.DataFrame, measures: Sequence[str] | None = None, max_columns: int = 40) -> Table:
    """Rows family x size x model_id x checkpoint ordered by step; a column per series.

    The long view of every checkpoint (the ranking leaderboard is the short one). ``measures``
    are selectors (default: every model-level series, at most ``max_columns``, performance
    measures first). Headers carry ↑/↓ from higher_is_better; cells ``value ± stderr``.
    """
    footer = provenance_footer(frame)
    f = model_level(frame)
    if f.empty:
        why = "no ok model-level records at a checkpoint" + (
            f" ({len(frame)} records: " + ", ".join(f"{k} {v}" for k, v in frame["status"].value_counts().items()) + ")"
            if not frame.empty else " (no records)"
        )
        return Table("trajectories", pd.DataFrame(), pd.DataFrame(), footer, note=why)
    f = f.copy()
    f["task"] = f["task"].fillna("")
    series = f[SERIES_KEYS].drop_duplicates().sort_values(SERIES_KEYS, kind="mergesort")
    series = [tuple(r) for r in series.itertuples(index=False)]
    if measures:
        series = [s for s in series if matches(*s, patterns=measures)]
    else:  # performance measures first (declared kind order), then the rest, in name order
        perf = {s: i for i, s in enumerate(performance_series(frame))}
        series.sort(key=lambda s: (perf.get(s, len(perf)), s))
    note = None
    if len(series) > max_columns:
        note = f"showing {max_columns} of {len(series)} series; choose with measures=[...]"
        series = series[:max_columns]
    if not series:
        return Table("trajectories", pd.DataFrame(), pd.DataFrame(), footer,
                     note=f"no series matches {list(measures or [])}")
    keep = pd.MultiIndex.from_tuples(series, names=SERIES_KEYS)
    f = f[pd.MultiIndex.from_frame(f[SERIES_KEYS]).isin(keep)]
    f = _latest(f, ROW_KEYS + SERIES_KEYS)
    for c in ("size", "checkpoint"):
        f[c] = f[c].fillna("")
    # sizes in parameter order where known (70m before 160m), else by name
    size_order = f.groupby(["family", "size"])["n_params"].max().rename("_np")
    rows = f[ROW_KEYS].drop_duplicates().join(size_order, on=["family", "size"])
    rows = rows.sort_values(["family", "_np", "size", "model_id", "step", "checkpoint"], kind="mergesort",
                            na_position="last").drop(columns="_np")
    idx = pd.MultiIndex.from_frame(rows)
    keyed = f.set_index(ROW_KEYS + SERIES_KEYS)
    values = keyed["value"].unstack(SERIES_KEYS).reindex(index=idx, columns=keep)
    errs = keyed["stderr"].unstack(SERIES_KEYS).reindex(index=idx, columns=keep)
    flags = keyed["warning"].map(_flagged).unstack(SERIES_KEYS).reindex(index=idx, columns=keep).fillna(False)
    hib = f.groupby(SERIES_KEYS)["higher_is_better"].agg(lambda s: s.dropna().iloc[-1] if s.notna().any() else None)
    labels = []
    for s in series:
        h = hib.get(s)
        arrow = ARROWS.get(bool(h)) if h is not None and not (isinstance(h, float) and math.isnan(h)) else ""
        labels.append(f"{series_label(*s)} {arrow}".strip())
    # numeric table: value and stderr columns side by side
    data = rows.reset_index(drop=True).copy()
    disp = rows.reset_index(drop=True).copy()
    disp["step"] = disp["step"].astype("Int64").astype(str)
    for j, (s, lab) in enumerate(zip(series, labels)):
        v, e = values.iloc[:, j].to_numpy(), errs.iloc[:, j].to_numpy()
        data[series_label(*s)] = v
        if np.isfinite(e.astype(float)).any():
            data[series_label(*s) + " stderr"] = e
        fl = flags.iloc[:, j].to_numpy(bool)
        disp[lab] = ["flagged" if g else fmt_value(a, b if np.isfinite(b) else None)
                     for a, b, g in zip(v.astype(float), e.astype(float), fl)]
        data.loc[fl, series_label(*s)] = np.nan
    data["step"] = data["step"].astype("Int64")
    return Table("trajectories", data, disp, footer, note=note)


# ---- relation ----------------------------------------------------------------------------


def _points(frame: pd.DataFrame) -> pd.DataFrame:
    """Wide frame: one row per (family, model_id, step), one column per series, plus covariates."""
    f = model_level(frame).copy()
    if f.empty:
        return pd.DataFrame()
    f["task"] = f["task"].fillna("")
    f = _latest(f, ["family", "model_id", "step"] + SERIES_KEYS)
    f = f[~f["warning"].map(_flagged)]  # a value its metric flagged is not a data point
    f["series"] = list(zip(f["metric"], f["measure"], f["task"]))
    wide = f.pivot_table(index=["family", "model_id", "step"], columns="series", values="value", aggfunc="last")
    meta = f.groupby(["family", "model_id", "step"]).agg(
        size=("size", "last"), n_params=("n_params", "max"), tokens_seen=("tokens_seen", "max")
    )
    return meta.join(wide).reset_index()


def _covariates(pts: pd.DataFrame) -> np.ndarray:
    """log(step) as a cubic (a monotone time trend need not be linear in log step) plus size:
    log(n_params) where known, else one indicator per size."""
    ls = np.log1p(pts["step"].to_numpy(float))
    cols = []
    if np.ptp(ls) > 0:
        z = (ls - ls.mean()) / ls.std()
        cols += [z, z**2, z**3]
    n_params = pts["n_params"].to_numpy(float)
    if np.isfinite(n_params).all() and np.ptp(n_params) > 0:
        cols.append(np.log(n_params))
    else:
        sizes = pts["size"].fillna("").astype(str)
        for s in sorted(sizes.unique())[1:]:
            cols.append((sizes == s).to_numpy(float))
    return np.column_stack(cols) if cols else np.empty((len(pts), 0))


def relation(
    frame: pd.DataFrame,
    performance: Sequence[str] | None = None,
    observables: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    min_points: int = 5,
    seed: int = 0,
) -> Table:
    """Every observable x performance measure: Spearman, Kendall (bootstrap 95% CIs), partial
    correlation controlling for log(step) and size, block-permutation p (blocks = model_id)
    and Benjamini-Hochberg q over the table; per family, with a ``log(tokens_seen)`` baseline row.
    """
    footer = provenance_footer(frame)
    pts_all = _points(frame)
    empty_cols = ["family", "observable", "performance", "n", "n_models", "spearman", "spearman_lo",
                  "spearman_hi", "kendall", "kendall_lo", "kendall_hi", "partial_r", "partial_lo", "partial_hi",
                  "partial_p", "perm_p", "q_bh", "gain", "gain_lo", "gain_hi", "q_partial"]
    if pts_all.empty:
        return Table("relation_checkpoint", pd.DataFrame(columns=empty_cols), pd.DataFrame(), footer,
                     note="no ok model-level records at checkpoints")
    rows = []
    all_series = [c for c in pts_all.columns if isinstance(c, tuple)]
    declared = set(performance_series(frame, performance))
    perf = [s for s in all_series if s in declared]
    obs = [s for s in all_series if s not in perf and (observables is None or matches(*s, patterns=observables))]
    if not perf:
        why = (f"selectors: {', '.join(performance)}" if performance else
               "no metric in these records declares a performance measure; run one (e.g. loss or a downstream "
               "score) beside the observables, or choose with performance=[metric:measure[:task]]")
        return Table("relation_checkpoint", pd.DataFrame(columns=empty_cols), pd.DataFrame(), footer,
                     note=f"no performance measure among the records ({why})")
    for family, pts in pts_all.groupby("family", sort=True):
        pts = pts.sort_values(["model_id", "step"], kind="mergesort").reset_index(drop=True)
        tokens = pts["tokens_seen"].to_numpy(float)
        base_name = "log(tokens_seen)" if np.isfinite(tokens).all() and (tokens > 0).all() else "log(1+step)"
        base = np.log(tokens) if base_name == "log(tokens_seen)" else np.log1p(pts["step"].to_numpy(float))
        cov_all = _covariates(pts)
        candidates = [(base_name, base)] + [(series_label(*s), pts[s].to_numpy(float)) for s in obs if s in pts]
        for p in perf:
            if p not in pts:
                continue
            y_all = pts[p].to_numpy(float)
            for name, x_all in candidates:
                ok = np.isfinite(x_all) & np.isfinite(y_all)
                n = int(ok.sum())
                if n < min_points:
                    continue
                x, y = x_all[ok], y_all[ok]
                blocks = pts["model_id"].to_numpy()[ok]
                row = {"family": family, "observable": name, "performance": series_label(*p), "n": n,
                       "n_models": int(len(set(blocks)))}
                if np.ptp(x) == 0 or np.ptp(y) == 0:
                    row["note"] = "constant " + ("observable" if np.ptp(x) == 0 else "performance")
                    rows.append(row)
                    continue
                row["spearman"] = S.spearman(x, y)
                row["spearman_lo"], row["spearman_hi"] = S.bootstrap_ci(x, y, "spearman",
                                                                        n_resamples=n_boot, seed=seed)
                row["kendall"] = S.kendall(x, y)
                row["kendall_lo"], row["kendall_hi"] = S.bootstrap_ci(x, y, "kendall",
                                                                      n_resamples=n_boot, seed=seed)
                if name == base_name:  # the baseline IS the time covariate: partial is undefined
                    row["partial_r"], row["partial_p"] = float("nan"), float("nan")
                else:
                    row["partial_r"], row["partial_p"], _ = S.partial_corr(x, y, cov_all[ok])
                    k = cov_all.shape[1]
                    row["partial_lo"], row["partial_hi"] = S.fisher_ci(row["partial_r"], n, k)
                    # out of sample: leave one run out (one checkpoint out when there is a single run)
                    groups = blocks if len(set(blocks)) >= 3 else None
                    row["gain"], row["gain_lo"], row["gain_hi"] = S.loo_gain(x, y, cov_all[ok], groups,
                                                                             n_boot=n_boot, seed=seed)
                row["perm_p"] = S.block_permutation_pvalue(x, y, blocks, n_perm=n_perm, seed=seed)
                rows.append(row)
    data = pd.DataFrame(rows)
    for c in empty_cols:
        if c not in data:
            data[c] = np.nan
    if data.empty:
        return Table("relation_checkpoint", data[empty_cols], pd.DataFrame(), footer,
                     note=f"fewer than {min_points} checkpoints with both an observable and a performance measure")
    data["q_bh"] = S.bh(data["perm_p"].to_numpy(float))
    data["is_baseline"] = data["observable"].isin(["log(tokens_seen)", "log(1+step)"])
    data["q_partial"] = S.bh(data["partial_p"].where(~data["is_baseline"]).to_numpy(float))
    data = data.sort_values(["family", "performance", "is_baseline", "observable"], ascending=[True, True, False, True],
                            kind="mergesort").reset_index(drop=True)
    from harness.report.levels import MIN_POINTS, verdict

    lines = []
    for fam in sorted(data["family"].unique()):
        n_pts = int(len(pts_all[pts_all["family"] == fam]))
        base = data[(data["family"] == fam) & data["is_baseline"]]["observable"]
        base_name = (base.iloc[0] if len(base) else "log(step)") + " + size"
        lines.append(verdict(data.assign(partial_p=data["partial_p"]), "checkpoint", fam, n_pts, base_name,
                             MIN_POINTS["checkpoint"], q_col="q_partial"))
    cols = empty_cols + (["note"] if "note" in data else [])
    data = data[cols]
    disp = pd.DataFrame({
        "family": data["family"], "observable": data["observable"], "performance": data["performance"],
        "n": data["n"].astype(int),
        "spearman [95% CI]": [_ci(r, lo, hi) for r, lo, hi in zip(data.spearman, data.spearman_lo, data.spearman_hi)],
        "kendall [95% CI]": [_ci(r, lo, hi) for r, lo, hi in zip(data.kendall, data.kendall_lo, data.kendall_hi)],
        "partial r | log step, size [95%]": [_ci(v, lo, hi) for v, lo, hi in
                                             zip(data["partial_r"], data["partial_lo"], data["partial_hi"])],
        "oos gain [95%]": [_ci(v, lo, hi) for v, lo, hi in zip(data["gain"], data["gain_lo"], data["gain_hi"])],
        "perm p": [_p(v) for v in data["perm_p"]],
        "BH q": [_p(v) for v in data["q_bh"]],
        "partial q": [_p(v) for v in data["q_partial"]],
    })
    if "note" in data:  # say why a row has no statistics (e.g. a constant score)
        disp["note"] = data["note"].fillna("").to_numpy()
    footer = [f"verdict: {v}" for v in lines] + footer + [
        f"bootstrap: {n_boot} paired resamples (percentile); permutation: {n_perm} within-model_id shuffles; "
        f"BH over {int(data['perm_p'].notna().sum())} tests; partial: cubic in log(1+step) + size (t-test p, "
        "BH -> partial q); oos gain: leave-one-run-out R² of baseline + observable minus baseline",
        "a row beats its baseline when partial q <= 0.05 and its out-of-sample gain is positive",
    ]
    return Table("relation_checkpoint", data, disp, footer)


def _ci(r: float, lo: float, hi: float) -> str:
    if not np.isfinite(r):  # noqa: SIM108
        return ""
    return f"{r:+.3f} [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else f"{r:+.3f}"


def _p(p: float) -> str:
    return "" if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")
