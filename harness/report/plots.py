"""Figures for the HTML report (matplotlib, Agg backend, PNG): pure functions of records.

* `loss_curves`: every model-level ``loss`` series against step, one line per model (log-log),
  plus each metric plugin's own ``plots(records, out_dir)`` (e.g. deceleration fits).
* `trajectory_plots`: every other observable against step, one panel per series, one line per
  run (size / configuration); values a metric flagged are left out and counted in the panel.
* `finite_size`: value against parameter count (log-log) at up to 6 steps, one panel per series.
* `scatter`: observable against performance with a Theil-Sen trend line (robust, scipy), one
  panel per strongest relation row. Panels share one figure: savefig dominates the cost.

Each function returns the files it wrote and never raises for missing data (it writes nothing).
Every figure has a title, axis labels with units (the records' ``unit``; "unit not recorded"
where a metric gave none) and a legend placed outside the data (below the panels) that the
saved image contains whole (`save`: tight bounding box). Tests collect the figures by
patching `save`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.tables import _flagged, model_level, performance_series, series_label

logger = logging.getLogger(__name__)

MAX_FINITE_SIZE = 9
MAX_SCATTER = 9
MAX_TRAJECTORY = 12
STEP_LABEL = "step (optimizer updates)"


def save(fig, path: Path, dpi: int = 80) -> Path:
    """Save with a tight bounding box (nothing outside the axes, e.g. the legend, is cut off) and close."""
    plt = _plt()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def unit_of(frame: pd.DataFrame, metric: str, measure: str) -> str:
    """The unit the records of one series declare ("unit not recorded" when none does)."""
    if "unit" not in frame:
        return "unit not recorded"
    u = frame.loc[(frame["metric"] == metric) & (frame["measure"] == measure), "unit"].dropna()
    u = [str(x) for x in dict.fromkeys(u) if str(x)]
    return " / ".join(u) if u else "unit not recorded"


def axis_label(frame: pd.DataFrame, metric: str, measure: str, task: str | None = None) -> str:
    """``series label (unit)`` for an axis."""
    return f"{series_label(metric, measure, task or None)} ({unit_of(frame, metric, measure)})"


def suptitle(fig, text: str, fontsize: int = 10):
    """The figure's title, above the highest panel artist (two-line panel titles included; the
    tight save keeps it): never over a panel's title. Call after the layout is final."""
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]
    top = max((b.y1 for b in boxes if b is not None), default=fig.bbox.height) / fig.bbox.height
    return fig.suptitle(text, fontsize=fontsize, y=max(1.0, top + 0.01), va="bottom")


def legend_below(fig, axes, ncol: int | None = None, fontsize: int = 7):
    """One legend for the figure, below the panels (outside every axes), deduplicated by label."""
    seen: dict[str, object] = {}
    for ax in np.atleast_1d(axes).ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_"):
                seen.setdefault(lab, h)
    if not seen:
        return None
    labels = list(seen)
    if ncol is None:
        widest = max(len(x) for x in labels)
        ncol = max(1, min(len(labels), 4 if widest < 28 else 2 if widest < 60 else 1))
    # just below the lowest axes artist (tick labels and x label included): never over the data
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in np.atleast_1d(axes).ravel() if ax.get_visible()]
    bottom = min((b.y0 for b in boxes if b is not None), default=0.0) / fig.bbox.height
    return fig.legend(list(seen.values()), labels, loc="upper center", bbox_to_anchor=(0.5, bottom - 0.01),
                      ncol=ncol, fontsize=fontsize, frameon=False)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display); plugins' figures use it too."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


_plt = pyplot


def _positive_log(ax, x, y) -> None:
    if (np.asarray(x) > 0).all():
        ax.set_xscale("log")
    if (np.asarray(y) > 0).all():
        ax.set_yscale("log")


def loss_curves(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Loss against step, one line per model (log-log axes), when there are loss records."""
    f = model_level(frame)
    f = f[f["measure"] == "loss"]
    if f.empty:
        return []
    plt = _plt()
    files = []
    for (metric, task), g in f.groupby(["metric", f["task"].fillna("")], sort=True):
        fig, ax = plt.subplots(figsize=(6, 4))
        for model_id, gm in g.sort_values("step").groupby("model_id", sort=True):
            gm = gm[gm["step"] > 0]
            ax.plot(gm["step"], gm["value"], marker="o", ms=3, label=str(model_id))
        if ax.lines:
            _positive_log(ax, g["step"][g["step"] > 0], g["value"])
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(axis_label(frame, metric, "loss", task or None))
        ax.set_title(f"{series_label(metric, 'loss', task or None)} over training")
        path = out_dir / f"loss_{metric}{'_' + task if task else ''}.png"
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.9)
        legend_below(fig, ax)
        files.append(save(fig, path))
    return files


def trajectory_plots(frame: pd.DataFrame, out_dir: Path, max_panels: int = MAX_TRAJECTORY) -> list[Path]:
    """Every model-level observable with >= 2 steps in some run (``loss`` has its own figure)
    against step: one panel per series, one line per run. Values the metric flagged are not
    drawn; the panel says how many were left out."""
    f = model_level(frame)
    if f.empty:
        return []
    f = f[f["measure"] != "loss"].assign(task=lambda d: d["task"].fillna(""))
    flagged = f["warning"].map(_flagged) if "warning" in f else pd.Series(False, index=f.index)
    panels = []
    for key, g in f.groupby(["metric", "measure", "task"], sort=True):
        good = g[~flagged.loc[g.index]]
        if (good.groupby("model_id")["step"].nunique() >= 2).any():
            panels.append((key, good, int(flagged.loc[g.index].sum())))
    if not panels:
        return []
    omitted = len(panels) - max_panels
    panels = panels[:max_panels]
    plt = _plt()
    fig, axes = _grid(plt, len(panels))
    for ax, ((metric, measure, task), g, n_flag) in zip(axes, panels):
        for model_id, gm in g.sort_values("step").groupby("model_id", sort=True):
            ax.plot(gm["step"], gm["value"], marker="o", ms=2.5, lw=1, label=str(model_id))
        if (g["step"] > 0).all():
            ax.set_xscale("log")
        ax.set_xlabel(STEP_LABEL, fontsize=8)
        ax.set_ylabel(axis_label(frame, metric, measure, task or None), fontsize=7)
        title = series_label(metric, measure, task or None)
        ax.set_title(title + (f"\n({n_flag} flagged values not drawn)" if n_flag else ""), fontsize=9)
        ax.tick_params(labelsize=7)
    more = f"; {omitted} more series in the trajectories table" if omitted > 0 else ""
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.9, hspace=0.6, wspace=0.35)
    suptitle(fig, "observables over training (one line per run)" + more)
    legend_below(fig, axes)
    return [save(fig, out_dir / "trajectories.png")]


def plugin_plots(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Call ``plots(records, out_dir)`` of every metric in the records that defines one."""
    from harness.registry import metrics

    files: list[Path] = []
    reg = metrics()
    for name in sorted(frame["metric"].dropna().unique()):
        if name not in reg:
            continue
        try:
            cls = reg.get(name)
            from harness.api import Metric

            if getattr(cls.plots, "__func__", None) is Metric.plots.__func__:
                continue  # the base class draws nothing
            sub = out_dir / name
            sub.mkdir(parents=True, exist_ok=True)
            out = cls.plots(frame[frame["metric"] == name].reset_index(drop=True), sub)
            files += [Path(p) for p in (out or [])]
        except Exception as exc:  # noqa: BLE001 (a plugin's figure must not break the report)
            logger.warning("metric %s: plots() failed: %s", name, exc)
    return files


def _grid(plt, n: int):
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def finite_size(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One figure, one panel per series: value vs parameters (log-log) at up to 6 steps."""
    f = model_level(frame)
    f = f[f["n_params"].notna()]
    if f.empty or f["n_params"].nunique() < 2:
        return []
    f = f.assign(task=f["task"].fillna(""))
    groups = [(k, g) for k, g in f.groupby(["metric", "measure", "task"], sort=True) if g["n_params"].nunique() >= 2]
    perf = {s: i for i, s in enumerate(performance_series(frame))}  # performance measures first
    groups.sort(key=lambda kg: (perf.get(kg[0], len(perf)), kg[0]))
    panels = []
    for key, g in groups:
        shared = [s for s, gs in g.groupby("step", sort=True) if gs["n_params"].nunique() >= 2]
        if shared:
            panels.append((key, g, shared))
        if len(panels) == MAX_FINITE_SIZE:
            break
    if not panels:
        return []
    plt = _plt()
    fig, axes = _grid(plt, len(panels))
    for ax, ((metric, measure, task), g, shared) in zip(axes, panels):
        pick = [shared[int(i)] for i in np.unique(np.linspace(0, len(shared) - 1, min(6, len(shared))).round())]
        for s in pick:
            gs = g[g["step"] == s].groupby("n_params")["value"].mean()
            ax.plot(gs.index, gs.values, marker="o", ms=3, label=f"step {int(s)}")
        _positive_log(ax, g["n_params"], g["value"])
        ax.set_xlabel("parameters (count)", fontsize=8)
        ax.set_ylabel(f"value ({unit_of(frame, metric, measure)})", fontsize=8)
        ax.set_title(series_label(metric, measure, task or None), fontsize=9)
    path = out_dir / "finite_size.png"
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.9, hspace=0.5, wspace=0.3)  # tight_layout costs seconds
    suptitle(fig, "finite size: value vs parameter count at shared steps")
    legend_below(fig, axes)
    return [save(fig, path)]


def scatter(frame: pd.DataFrame, relation: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Observable vs performance for the strongest relation rows (by |Spearman|)."""
    from scipy import stats

    from harness.report.tables import _points

    if relation.empty or "spearman" not in relation:
        return []
    rel = relation[relation["spearman"].notna() & ~relation["observable"].str.startswith("log(")]
    if rel.empty:
        return []
    rel = rel.assign(_a=-rel["spearman"].abs()).sort_values(["_a", "family", "observable", "performance"],
                                                             kind="mergesort").head(MAX_SCATTER)
    pts = _points(frame)
    labels = {series_label(*c): c for c in pts.columns if isinstance(c, tuple)}
    panels = []
    for r in rel.itertuples(index=False):
        xs, ys = labels.get(r.observable), labels.get(r.performance)
        if xs is not None and ys is not None:
            panels.append((r, xs, ys))
    if not panels:
        return []
    plt = _plt()
    fig, axes = _grid(plt, len(panels))
    for ax, (r, xs, ys) in zip(axes, panels):
        p = pts[(pts["family"] == r.family) & pts[xs].notna() & pts[ys].notna()]
        for model_id, g in p.groupby("model_id", sort=True):
            ax.scatter(g[xs], g[ys], s=10, label=str(model_id))
        yv = p[ys].to_numpy(float)
        log_y = len(yv) > 0 and (yv > 0).all() and yv.max() / yv.min() > 20  # perplexities span decades
        if log_y:
            ax.set_yscale("log")
        if len(p) >= 3 and p[xs].nunique() > 1:
            slope, icpt, _, _ = stats.theilslopes(np.log(yv) if log_y else yv, p[xs])
            xx = np.linspace(p[xs].min(), p[xs].max(), 50)
            trend = icpt + slope * xx
            ax.plot(xx, np.exp(trend) if log_y else trend, "k--", lw=1, label="Theil-Sen trend")
        ax.set_xlabel(f"{r.observable} ({unit_of(frame, xs[0], xs[1])})", fontsize=8)
        ax.set_ylabel(f"{r.performance} ({unit_of(frame, ys[0], ys[1])})", fontsize=8)
        ax.set_title(f"{r.family}: rho={r.spearman:+.2f}", fontsize=9)
    path = out_dir / "scatter.png"
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.9, hspace=0.5, wspace=0.3)  # tight_layout costs seconds
    suptitle(fig, "observable vs performance (checkpoint level; strongest rows)")
    legend_below(fig, axes)
    return [save(fig, path)]
