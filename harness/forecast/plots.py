"""Backtest figures (matplotlib, Agg): predicted vs realised with intervals; MAE vs cutoff."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def predicted_vs_realised(forecasts: pd.DataFrame, cutoff: float, path: Path, level: float) -> Path:
    """One panel per method: each held-out (run, series) forecast at ``cutoff`` against what the
    run reached, with its interval as a vertical bar; the diagonal is a perfect forecast."""
    plt = _plt()
    f = forecasts[(forecasts["cutoff"] == cutoff) & (forecasts["status"] == "ok") & forecasts["realised"].notna()]
    methods = list(dict.fromkeys(forecasts["method"]))
    n = max(len(methods), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    series = sorted(f["series"].unique())
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(series)}
    lo_all = np.nanmin(f[["realised"]].to_numpy()) if len(f) else 0.0
    hi_all = np.nanmax(f[["realised"]].to_numpy()) if len(f) else 1.0
    pad = 0.05 * (hi_all - lo_all or 1.0)
    for ax, m in zip(axes.ravel(), methods):
        g = f[f["method"] == m]
        for s, gs in g.groupby("series"):
            lo = np.clip(gs["lower"].to_numpy(float), lo_all - 10 * pad, hi_all + 10 * pad)
            hi = np.clip(gs["upper"].to_numpy(float), lo_all - 10 * pad, hi_all + 10 * pad)
            pred = gs["prediction"].to_numpy(float)
            ax.errorbar(gs["realised"], pred, yerr=[pred - lo, hi - pred], fmt="o", ms=3, lw=0.8, alpha=0.8,
                        color=colors[s], label=s)
        ax.plot([lo_all - pad, hi_all + pad], [lo_all - pad, hi_all + pad], color="grey", lw=0.8, ls="--")
        ax.set_xlim(lo_all - pad, hi_all + pad)
        ax.set_ylim(lo_all - 4 * pad, hi_all + 4 * pad)
        ax.set_title(f"{m} (cutoff {cutoff:g})")
        ax.set_xlabel("realised value at the target step")
        ax.set_ylabel(f"forecast with {level:.0%} interval")
    for ax in axes.ravel()[len(methods):]:
        ax.axis("off")
    if series:
        axes.ravel()[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mae_vs_cutoff(summary: pd.DataFrame, path: Path) -> Path:
    """Overall MAE of each method against the cutoff (fraction of the target step)."""
    plt = _plt()
    s = summary[summary["series"] == "all"]
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for m, g in s.groupby("method", sort=False):
        g = g.sort_values("cutoff")
        ax.plot(g["cutoff"], g["mae"], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    cuts = sorted(s["cutoff"].unique())
    ax.set_xticks(cuts)
    ax.set_xticklabels([f"{c:g}" for c in cuts])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("cutoff (fraction of the target step)")
    ax.set_ylabel("MAE of the forecast (held-out runs)")
    ax.set_title("forecast error vs how early")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
