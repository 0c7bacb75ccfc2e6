"""Figures of ``time_scaling``, drawn from its records alone (matplotlib, Agg).

One figure, two panels:

* left: loss against tau on log-log axes, one colour per run; a run whose ``power_law`` record
  is 1 also gets its fitted ``c tau^-alpha + L0`` (dashed). A run the metric flagged (power_law
  = 0, or a ``flagged: ...`` warning on alpha) gets its data only, and its legend entry says
  ``flagged: <reason>``: a fitted curve through a curve that is no power law would show a
  result the metric refused.
* right: the local slopes ``-d log(L - L0) / d log tau`` at their window centres (bars: the
  window; error bars: 1 stderr), the 1/3 line, the last window (the asymptotic slope) ringed.
  Flagged runs' slopes are not drawn (not results; a crash's slopes would set the scale).

The legend sits below the panels (outside the data) and the figure is saved with a tight
bounding box, so it is never cut off.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FLAGGED = "flagged"


def _extra(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _short_reason(text: str, n: int = 70) -> str:
    text = str(text)
    for head in ("flagged: ", "no power law: "):
        if text.lower().startswith(head):
            text = text[len(head):]
    text = text.split(";")[0]
    return text if len(text) <= n else text[: n - 1] + "…"


def run_flags(records: pd.DataFrame, metric: str = "time_scaling") -> dict[str, str | None]:
    """model_id -> None when its curve is a power law (a fitted line may be drawn), else the reason."""
    out: dict[str, str | None] = {}
    r = records[(records["metric"] == metric) & (records["status"] == "ok")]
    for model_id, g in r.groupby("model_id", sort=True):
        reason = None
        pl = g[g["measure"] == "power_law"]
        if len(pl) and float(pl["value"].iloc[-1]) != 1.0:
            msg = pl["message"].dropna()
            reason = msg.iloc[-1] if len(msg) else "no power law"
        alpha = g[g["measure"] == "alpha"]
        warn = alpha["warning"].dropna() if "warning" in alpha else pd.Series(dtype=object)
        flagged = [w for w in warn if str(w).lower().startswith(FLAGGED)]
        if reason is None and flagged:
            reason = flagged[-1]
        if reason is None and pl.empty:
            reason = "no power_law record: not tested"
        out[str(model_id)] = None if reason is None else _short_reason(reason)
    return out


def draw(records: pd.DataFrame, out_dir: Path, metric: str = "time_scaling") -> list[Path]:
    """Write ``<out_dir>/time_scaling.png``; returns [] when there is no fitted curve to show."""
    from harness.report import plots as RP

    plt = RP.pyplot()
    ok = records[(records["metric"] == metric) & (records["status"] == "ok")]
    fits = ok[ok["measure"] == "alpha"]
    if fits.empty:
        return []
    flags = run_flags(records, metric)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    drawn = 0
    from harness.report.ranking import short_labels

    names = short_labels(sorted(str(m) for m in fits["model_id"].unique()))
    for i, (_, r) in enumerate(fits.sort_values("model_id").iterrows()):
        model_id = names.get(str(r["model_id"]), str(r["model_id"]))
        e = _extra(r["extra"])
        inputs = e.get("inputs") or {}
        tau, loss = np.asarray(inputs.get("tau", []), float), np.asarray(inputs.get("loss", []), float)
        keep = np.isfinite(tau) & np.isfinite(loss) & (tau > 0) & (loss > 0)
        tau, loss = tau[keep], loss[keep]
        if not len(tau):
            continue
        colour = cmap(i % 10)
        flag = flags.get(str(r["model_id"]))
        g = ok[ok["model_id"] == r["model_id"]]
        p = dict(zip(g["measure"], g["value"]))
        if flag is None:
            label = f"{model_id}: alpha = {r['value']:.3f}" + (f", L0 = {p['L0']:.3g}" if "L0" in p else "")
        else:
            label = f"{model_id}: flagged: {flag}"
        ax.loglog(tau, loss, ".", ms=4, color=colour, label=label)
        if flag is None and "c" in p:
            l0 = p.get("L0", _fixed_l0(e))
            grid = np.geomspace(tau.min(), tau.max(), 200)
            ax.loglog(grid, p["c"] * grid ** (-r["value"]) + l0, "--", lw=1.2, color=colour,
                      label=f"{model_id}: fit c·tau^-alpha + L0")
        drawn += 1
        slopes = g[g["measure"] == "local_slope"].sort_values("step")
        if len(slopes) and flag is None:  # a flagged run's slopes are not results (and would set the scale)
            wins = [_extra(x).get("tau_window") for x in slopes["extra"]]
            good = [(w, v, se) for w, v, se in zip(wins, slopes["value"], slopes["stderr"])
                    if isinstance(w, list) and len(w) == 2 and v is not None and np.isfinite(v)]
            if good:
                centre = np.array([math.sqrt(w[0] * w[1]) for w, _, _ in good])
                lo = centre - np.array([w[0] for w, _, _ in good])
                hi = np.array([w[1] for w, _, _ in good]) - centre
                val = np.array([v for _, v, _ in good], float)
                err = np.array([0.0 if se is None or not np.isfinite(se) else se for _, _, se in good], float)
                ax2.errorbar(centre, val, xerr=[lo, hi], yerr=err, fmt="o", color=colour, ms=4, lw=1, capsize=2)
                ax2.plot(centre[-1:], val[-1:], "o", ms=11, mfc="none", color=colour)
    if not drawn:
        plt.close(fig)
        return []
    ax2.set_xscale("log")
    ax2.axhline(1 / 3, color="k", ls=":", lw=1, label="1/3 (Liu et al.)")
    ax2.plot([], [], "o", ms=11, mfc="none", color="grey", label="last window = asymptotic slope")
    ax2.plot([], [], " ", label="flagged runs: no local slopes drawn (not a power law)")
    tau_label = _tau_label(fits)
    ax.set_xlabel(tau_label)
    ax.set_ylabel(_loss_label(records))
    ax.set_title("loss vs cumulative learning rate (log-log)")
    ax2.set_xlabel(tau_label)
    ax2.set_ylabel("local slope -dlog(L-L0)/dlog tau (exponent)")
    ax2.set_title("local slopes (half-decade windows)")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    RP.suptitle(fig, "time_scaling: one-third time scaling fit")
    RP.legend_below(fig, [ax, ax2])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [RP.save(fig, out_dir / "time_scaling.png", dpi=90)]  # tight box: the legend below stays whole


def _fixed_l0(extra: dict[str, Any]) -> float:
    """L0 of a fit that held it fixed (``extra["L0"] = "fixed at 0"``), else 0."""
    text = str(extra.get("L0", ""))
    try:
        return float(text.rsplit(" ", 1)[-1]) if text.startswith("fixed at") else 0.0
    except ValueError:
        return 0.0


def _tau_label(fits: pd.DataFrame) -> str:
    kinds = {(_extra(e).get("time") or "") for e in fits["extra"]}
    if kinds and all(k.startswith("step") for k in kinds):
        return "step (no learning rates known; optimizer updates)"
    return "tau = cumulative learning rate (sum of lr over updates)"


def _loss_label(records: pd.DataFrame) -> str:
    src = sorted({(_extra(e).get("source") or "") for e in records.loc[records["measure"] == "alpha", "extra"]} - {""})
    return "loss (nats" + (f"; {', '.join(src)})" if src else ")")
