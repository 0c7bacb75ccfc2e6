"""Figures of the ``deceleration`` metric, drawn from its records alone.

The ``t_d`` record of each run carries the fitted points and parameters in ``extra["fit"]``,
so a figure needs no artifact and no refit. Matplotlib runs on the Agg backend (no display).

Example::

    plot_fits(harness.load_results("results/run"), Path("figs"))   # -> [figs/deceleration_<run>.png]
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .bnsl import bnsl

logger = logging.getLogger(__name__)


def _fits(records: pd.DataFrame, metric: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """(model_id, fit summary, the flag's reason or None) of every ok ``t_d`` record with a fit."""
    if records is None or len(records) == 0:
        return []
    sel = records[(records["metric"] == metric) & (records["measure"] == "t_d") & (records["status"] == "ok")]
    out = []
    for _, row in sel.iterrows():
        extra = row.get("extra")
        extra = json.loads(extra) if isinstance(extra, str) else (extra or {})
        fit = extra.get("fit")
        warning = row.get("warning")
        flag = warning if isinstance(warning, str) and warning.lower().startswith("flagged") else None
        if fit and fit.get("params") is not None:
            out.append((str(row["model_id"]), fit, flag))
    return out


def law_params(fit: dict[str, Any]) -> tuple[float, ...]:
    """``(a, b, c0, c1, d1, f1, ...)`` from a stored fit summary (see `BNSLFit.to_dict`)."""
    p = dict(zip(fit["names"], fit["params"]))
    out = [p.get("a", 0.0), p["b"], p["c0"]]
    for i in range(1, int(fit["n_breaks"]) + 1):
        d = float(np.exp(p[f"d{i}log"])) if f"d{i}log" in p else p[f"d{i}"]
        out += [p[f"c{i}"], d, p[f"f{i}"]]
    return tuple(out)


def plot_fits(records: pd.DataFrame, out_dir: Path, metric: str = "deceleration") -> list[Path]:
    """One log-log figure per run: fitted points, the law up to the target, a line at t_d; a t_d the
    metric flagged (warning ``flagged: ...``) gets its points and the reason, never the law."""
    from harness.report import plots as RP

    plt = RP.pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for model_id, fit, flag in _fits(records, metric):
        x, y = np.asarray(fit["x"], float), np.asarray(fit["y"], float)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        if flag:  # the metric refused this fit: its data and the reason, never the fitted law
            ax.loglog(x, y, ".", ms=3, alpha=0.6, label=f"fitted points; {flag[:90]}")
        else:
            params = law_params(fit)
            hi = max(float(x.max()), float(fit.get("target") or x.max()))
            grid = np.geomspace(float(x.min()), hi, 400)
            ax.loglog(x, y, ".", ms=3, alpha=0.6, label="fitted points")
            ax.loglog(grid, bnsl(grid, *params), "-", lw=1.5,
                      label=f"BNSL fit ({fit['mode']}, RSLE {fit['rsle']:.2g})")
            ax.axvline(params[4], color="k", ls="--", lw=0.8, label=f"t_d = {params[4]:.4g}")
        unit = fit.get("unit") or ("tokens" if fit.get("x_key") == "tokens_seen" else "steps")
        ax.set_xlabel(f"{fit.get('x_key', 'step')} ({unit})")
        ax.set_ylabel("loss (nats)")
        ax.set_title(f"deceleration: {model_id}", fontsize=9)
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.9)
        RP.legend_below(fig, ax)  # below the axes: inside, it covered the curve's tail
        path = out_dir / f"{metric}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', model_id)}.png"
        files.append(RP.save(fig, path, dpi=110))
    return files
