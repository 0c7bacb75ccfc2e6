"""Figures of the `transport` metric, drawn from its suite records only: for each exponent
(D, z, delta) and the per-event closure residual, the value against the aligned step for the
real field and both nulls (R1 permuted, R2 Gaussian) side by side, each with its 95% bootstrap
band, so a reader sees at once whether real leaves the null floors.

Example::

    draw(records_of_one_run, Path("figures"))   # -> [figures/transport_exponents.png]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PANELS = (("D", "D: cascade size ~ N^D"), ("z", "z: duration ~ N^z"), ("delta", "delta: v_rel ~ N^delta"),
          ("closure_residual", "closure residual delta_event - (D - z - 1)"))
STYLE = {"real": ("-", "o", "tab:red"), "R1": ("--", "s", "tab:blue"), "R2": (":", "^", "tab:grey")}


def draw(records: pd.DataFrame, out_dir: Path) -> list[Path]:
    from harness.report import plots as RP

    ok = records[(records["metric"] == "transport") & (records["status"] == "ok") & (records["scope"] == "suite")
                 & records["size"].isna() & records["step"].notna()]
    ok = ok[ok["measure"].isin([m for m, _ in PANELS])]
    if ok.empty:
        return []
    plt = RP.pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.8))
    for ax, (measure, title) in zip(axes, PANELS):
        sub = ok[ok["measure"] == measure]
        for task, (ls, marker, colour) in STYLE.items():
            line = sub[sub["task"] == task].sort_values("step")
            if line.empty:
                continue
            x, y = line["step"].astype(float), line["value"].astype(float)
            ax.plot(x, y, ls, marker=marker, color=colour, label={"real": "real field", "R1": "R1 (permuted null)",
                                                                   "R2": "R2 (Gaussian null)"}[task])
            se = line["stderr"].astype(float)
            if se.notna().any():
                ax.fill_between(x, y - 1.96 * se.fillna(0), y + 1.96 * se.fillna(0), color=colour, alpha=0.15, lw=0)
        ax.set_xlabel("aligned step (optimizer updates)")
        ax.set_ylabel(f"{measure} (exponent, dimensionless)" if measure != "closure_residual" else "residual (exponent units)")
        ax.set_title(title, fontsize=9)
        if (ok["step"] > 0).any() and ok["step"].max() / max(ok.loc[ok["step"] > 0, "step"].min(), 1) > 50:
            ax.set_xscale("symlog", linthresh=1)
    fig.suptitle("transport: finite-size exponents per aligned step, real vs both nulls (95% bootstrap bands)")
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.22, top=0.84, wspace=0.35)
    RP.legend_below(fig, list(axes))
    return [RP.save(fig, out_dir / "transport_exponents.png", dpi=100)]
