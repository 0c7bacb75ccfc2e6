"""Backtest tables for people: rich tables for the terminal and one Markdown file."""

from __future__ import annotations

import math

import pandas as pd

COLUMNS = [("mae", "MAE"), ("rmse", "RMSE"), ("mae_se", "MAE/se"), ("coverage", "coverage"),
           ("width", "mean width"), ("width_se", "width/se"), ("spearman", "Spearman"), ("n", "n"), ("n_skipped", "skipped")]


def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (int,)) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1):
        return str(int(v))
    return f"{v:.{digits}f}" if abs(v) < 10 else f"{v:.1f}"


def overall_frame(bt) -> pd.DataFrame:
    """The backtest's scores over all series, one row per method and cutoff."""
    s = bt.summary[bt.summary["series"] == "all"].copy()
    rows = []
    for _, r in s.iterrows():
        rows.append({"method": r["method"], "cutoff": f"{r['cutoff']:g}",
                     **{label: _f(r[k]) for k, label in COLUMNS}})
    return pd.DataFrame(rows)


def per_series_frame(bt, cutoff: float) -> pd.DataFrame:
    """The backtest's scores at one cutoff, one row per series."""
    s = bt.summary[(bt.summary["cutoff"] == cutoff)]
    methods = list(dict.fromkeys(s["method"]))
    order = [x for x in dict.fromkeys(s["series"]) if x != "all"] + (["all"] if (s["series"] == "all").any() else [])
    by = {(r["series"], r["method"]): r for _, r in s.iterrows()}

    def cell(series, m):
        r = by.get((series, m))
        if r is None or not r["n"]:
            return "skipped"
        mae = "mixed units" if pd.isna(r["mae"]) else f"{r['mae']:.3f}"
        return mae + ("" if pd.isna(r["mae_se"]) else f" ({r['mae_se']:.1f})")

    return pd.DataFrame([{"series": series, **{m: cell(series, m) for m in methods}} for series in order])


def _rich(df: pd.DataFrame, title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in df.columns:
        t.add_column(str(c), justify="left" if c in ("method", "series", "cutoff") else "right")
    for _, r in df.iterrows():
        t.add_row(*[str(v) for v in r])
    return t


def summary_tables(bt):
    """(rich overall table, rich per-series MAE table at the cutoff nearest 0.1, Markdown text)."""
    overall = overall_frame(bt)
    cutoffs = sorted(bt.summary["cutoff"].unique(), key=lambda c: abs(c - 0.1))
    at = cutoffs[0]
    per = per_series_frame(bt, at)
    lvl = f"{bt.level:.0%}"
    t_over = _rich(overall, f"backtest, every completed run held out in turn (all series; {lvl} intervals)")
    t_per = _rich(per, f"MAE per series at cutoff {at:g} (in units of the realised stderr)")
    md = (f"# Forecast backtest\n\n## All series ({lvl} intervals)\n\n{overall.to_markdown(index=False)}\n\n"
          f"## MAE per series at cutoff {at:g}\n\n{per.to_markdown(index=False)}\n\n**Verdict:** {bt.verdict}\n")
    return t_over, t_per, md
