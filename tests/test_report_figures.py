"""The report's figures as matplotlib objects: every figure has a title, axis labels with units
and a legend that covers no data and is not cut off; trajectory figures have one panel per
observable and one line per run; a fit figure never draws a fitted curve through a curve its
metric flagged (planted flagged records). Figures are collected by patching
`harness.report.plots.save`, which every figure (core and the time_scaling plugin) goes through.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.records import normalise
from harness.report import plots as P
from harness.store import to_frame
from harness_plugins.metrics.time_scaling import TimeScalingMetric
from test_report_tables import make_frame


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved while the test runs, drawn (so extents are final) before it is closed."""
    got = []
    real = P.save

    def keep(fig, path, dpi=80):
        fig.canvas.draw()
        got.append(fig)
        fig.__dict__["_test_path"] = path
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    monkeypatch.setattr(P, "save", keep)
    yield got
    import matplotlib.pyplot as plt

    for fig in got:
        plt.close(fig)
    assert real is not None


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def assert_readable(fig):
    """Title, axis labels with a unit in parentheses, a legend outside every axes' data area and
    inside the saved (tight) image."""
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    has_title = bool(fig._suptitle and fig._suptitle.get_text()) or all(ax.get_title() for ax in axes)
    assert has_title, "figure without a title"
    for ax in axes:
        assert ax.get_xlabel() and "(" in ax.get_xlabel(), f"x label without a unit: {ax.get_xlabel()!r}"
        assert ax.get_ylabel() and "(" in ax.get_ylabel(), f"y label without a unit: {ax.get_ylabel()!r}"
    if fig._suptitle is not None and fig._suptitle.get_text():  # the figure title is over no panel's title
        top = fig._suptitle.get_window_extent(renderer)
        for ax in axes:
            if ax.get_title():
                assert not _overlaps(top, ax.title.get_window_extent(renderer)), "figure title over a panel title"
    legends = list(fig.legends) + [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    assert legends, "figure without a legend"
    whole = fig.get_tightbbox(renderer)  # what savefig(bbox_inches="tight") keeps, in inches
    dpi = fig.dpi
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in axes:
            assert not _overlaps(box, ax.get_window_extent(renderer)), "legend covers an axes' data area"
        inches = box.transformed(fig.dpi_scale_trans.inverted())
        assert whole.x0 - 1 / dpi <= inches.x0 and inches.x1 <= whole.x1 + 1 / dpi, "legend cut off sideways"
        assert whole.y0 - 1 / dpi <= inches.y0 and inches.y1 <= whole.y1 + 1 / dpi, "legend cut off"


def test_every_core_figure_is_readable(figures, tmp_path):
    f = make_frame()
    out = tmp_path / "figs"
    out.mkdir()
    P.loss_curves(f, out)
    P.trajectory_plots(f, out)
    P.finite_size(f, out)
    from harness.report.tables import relation

    P.scatter(f, relation(f, n_boot=50, n_perm=50).data, out)
    names = sorted(fig.__dict__["_test_path"].name for fig in figures)
    assert {"finite_size.png", "scatter.png", "trajectories.png"} <= set(names) and any(
        n.startswith("loss_") for n in names)
    for fig in figures:
        assert_readable(fig)


def _traj_frame():
    rows = []
    for run in ("a", "b", "c"):
        for step in (1, 10, 100):
            common = dict(family="fam", model_id=f"fam/{run}", size="s", step=step, status="ok", scope="checkpoint",
                          run_id="r", seed=0)
            rows.append(normalise({**common, "metric": "obs", "measure": "norm", "value": step * 0.1, "unit": "L2"}))
            rows.append(normalise({**common, "metric": "obs", "measure": "ratio", "value": 1.0 / step,
                                   "warning": "flagged: planted" if run == "c" else None}))
    return to_frame(rows)


def test_trajectories_one_panel_per_observable_one_line_per_run_flagged_not_drawn(figures, tmp_path):
    P.trajectory_plots(_traj_frame(), tmp_path)
    (fig,) = figures
    panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"obs.norm", "obs.ratio"}
    assert [ln.get_label() for ln in panels["obs.norm"].lines] == ["fam/a", "fam/b", "fam/c"]
    assert [ln.get_label() for ln in panels["obs.ratio"].lines] == ["fam/a", "fam/b"]  # c's values are flagged
    assert "3 flagged values not drawn" in panels["obs.ratio"].get_title()
    assert "(L2)" in panels["obs.norm"].get_ylabel() and "unit not recorded" in panels["obs.ratio"].get_ylabel()
    assert_readable(fig)


def _time_scaling_records(flag_b: bool):
    """Two runs of time_scaling records: a is a power law (alpha 0.35), b is planted as flagged."""
    rows = []
    tau = np.geomspace(1e3, 1e5, 20)
    for run, alpha, c in (("a", 0.35, 5.0), ("b", 0.5, 1.07e14)):
        loss = c * tau**-alpha
        flagged = flag_b and run == "b"
        warn = "flagged: no power law: loss fell to 1e-9 of its initial value" if flagged else None
        common = dict(family="toy", model_id=f"toy/{run}", size="s", step=4000, status="ok", scope="trajectory",
                      run_id="r", seed=0, metric="time_scaling")
        extra = {"inputs": {"tau": tau.tolist(), "loss": loss.tolist()}, "time": "cumulative learning rate",
                 "source": "loss records", "L0": "fixed at 0"}
        rows.append(normalise({**common, "measure": "alpha", "value": alpha, "warning": warn,
                               "extra": json.dumps(extra)}))
        rows.append(normalise({**common, "measure": "c", "value": c, "warning": warn}))
        rows.append(normalise({**common, "measure": "power_law", "value": 0.0 if flagged else 1.0,
                               "message": "loss fell to 1e-9 of its initial value" if flagged else "ok"}))
        for lo in (1e3, 10**3.5, 1e4, 10**4.5):
            rows.append(normalise({**common, "measure": "local_slope", "value": alpha, "stderr": 0.01,
                                   "step": int(lo), "warning": warn,
                                   "extra": json.dumps({"tau_window": [lo, lo * 10**0.5]})}))
    return to_frame(rows)


def _fit_lines(fig):
    return [ln for ax in fig.axes for ln in ax.lines if ln.get_label().endswith("fit c·tau^-alpha + L0")]


def test_time_scaling_never_draws_a_fit_through_a_flagged_curve(figures, tmp_path):
    TimeScalingMetric.plots(_time_scaling_records(flag_b=True), tmp_path)
    (fig,) = figures
    fits = _fit_lines(fig)
    assert [ln.get_label() for ln in fits] == ["a: fit c·tau^-alpha + L0"]  # none for b
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any(lab.startswith("b: flagged: loss fell to 1e-9") for lab in labels), labels
    assert not any("1.07e" in lab for lab in labels)  # the flagged fit's parameters are not shown
    assert_readable(fig)


def test_time_scaling_draws_the_fit_of_every_power_law(figures, tmp_path):
    """The control: unflagged, both runs get their fitted curve (the test above can fail)."""
    TimeScalingMetric.plots(_time_scaling_records(flag_b=False), tmp_path)
    (fig,) = figures
    assert len(_fit_lines(fig)) == 2
    fit_a = _fit_lines(fig)[0]
    x, y = fit_a.get_data()
    assert np.allclose(y, 5.0 * np.asarray(x) ** -0.35)  # the fitted law itself, with the fixed L0 = 0


def test_subspace_figure_is_readable(figures, tmp_path):
    rows = []
    for step in (0, 10, 100):
        common = dict(family="toy", model_id="toy/a", size="s", step=step, status="ok", scope="checkpoint",
                      run_id="r", seed=0, metric="subspace", task="k=10")
        for measure, v in (("f_top", 0.3), ("f_top_chance", 0.03), ("overlap_previous", 0.8), ("overlap_chance", 0.03)):
            rows.append(normalise({**common, "measure": measure, "value": v}))
    from harness_plugins.metrics.subspace.metric import SubspaceMetric

    SubspaceMetric.plots(to_frame(rows), tmp_path)
    (fig,) = figures
    assert_readable(fig)


def _deceleration_records(flagged: bool):
    x = np.geomspace(10, 1000, 30)
    fit = {"names": ["b", "c0", "c1", "d1", "f1"], "params": [2.0, 0.2, 0.3, 200.0, 1.0], "n_breaks": 1,
           "x": x.tolist(), "y": (2.0 * x**-0.2).tolist(), "mode": "robust", "rsle": 0.01, "x_key": "step",
           "unit": "steps", "target": 1000.0}
    row = dict(family="toy", model_id="toy/a", size="s", step=1000, status="ok", scope="trajectory", run_id="r",
               seed=0, metric="deceleration", measure="t_d", value=200.0, extra=json.dumps({"fit": fit}),
               warning="flagged: planted: no deceleration" if flagged else None)
    return to_frame([normalise(row)])


@pytest.mark.parametrize("flagged", [False, True])
def test_deceleration_figure_draws_the_law_only_for_an_unflagged_fit(figures, tmp_path, flagged):
    from harness_plugins.metrics.deceleration.metric import DecelerationMetric

    DecelerationMetric.plots(_deceleration_records(flagged), tmp_path)
    (fig,) = figures
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    has_law = any(lab.startswith("BNSL fit") for lab in labels)
    assert has_law is not flagged, labels
    assert any("planted: no deceleration" in lab for lab in labels) is flagged
    assert_readable(fig)
