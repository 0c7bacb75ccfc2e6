"""Figures of the `subspace` metric, drawn from records only: per model, f_top (full batch,
solid; mini-batch, dashed) against step for each k (one colour per k) with the chance level
k/P dotted, and the subspace overlap with the previous checkpoint (solid) and with the
reference step (dashed).

Example::

    draw(records_of_one_run, Path("figures"))   # -> [figures/subspace_<model>.png, ...]
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)


def _k(task: str) -> int:
    return int(str(task).split("=", 1)[1])


def draw(records: pd.DataFrame, out_dir: Path) -> list[Path]:
    from harness.report import plots as RP

    plt = RP.pyplot()
    ok = records[(records["metric"] == "subspace") & (records["status"] == "ok")]
    if ok.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    ks = sorted({_k(t) for t in ok["task"].dropna() if str(t).startswith("k=")})
    colour = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(ks)}  # one colour per k
    for model_id, rows in ok.groupby("model_id"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for measure, style, axis in (("f_top", "-", ax1), ("f_top_minibatch", "--", ax1), ("f_top_chance", ":", ax1),
                                     ("overlap_previous", "-", ax2), ("overlap_reference", "--", ax2),
                                     ("overlap_chance", ":", ax2)):
            sub = rows[rows["measure"] == measure]
            for task, line in sorted(sub.groupby("task"), key=lambda kv: _k(kv[0])):
                line = line.sort_values("step")
                axis.plot(line["step"], line["value"], style, color=colour[_k(task)],
                          marker="." if style != ":" else None, label=f"{measure} {task}")
        for axis, ylabel, title in ((ax1, "f_top = |P_k g|^2 / |g|^2 (fraction)", "gradient in the top-k subspace"),
                                    (ax2, "overlap |V_k^T W_k|_F^2 / k (fraction)", "top-k subspace overlap")):
            axis.set_xscale("symlog", linthresh=1)
            axis.set_yscale("log")
            axis.set_xlabel("step (optimizer updates)")
            axis.set_ylabel(ylabel)
            axis.set_title(title, fontsize=9)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.85, wspace=0.3)
        RP.suptitle(fig, f"subspace: {model_id}")
        RP.legend_below(fig, [ax1, ax2])  # below the panels: the dotted chance lines sit low, a legend inside covered them
        path = out_dir / f"subspace_{str(model_id).replace('/', '__').replace(' ', '_')}.png"
        paths.append(RP.save(fig, path, dpi=100))
    return paths
