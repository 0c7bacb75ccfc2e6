"""The deceleration metric on hand-built trajectory contexts: curves from records and from a
training-log history with known BNSL parameters, reproducibility from the stored inputs,
skipped/error records for degenerate curves, parameter validation, config and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.api import ParameterError, TrajectoryContext
from harness_plugins.metrics.deceleration import DecelerationMetric
from harness_plugins.metrics.deceleration.bnsl import bnsl as law
from harness_plugins.metrics.deceleration.bnsl import fit_bnsl

ROOT = Path(__file__).resolve().parents[1]
TRUTH = (0.0, 20.0, 0.2, -0.18, 5000.0, 0.3)  # a, b, c0, c1, d1, f1


def ctx(tmp_path, records=None, history=None, model_id="run-a"):
    cols = ["metric", "measure", "status", "model_id", "step", "tokens_seen", "value", "task", "layer"]
    recs = records if records is not None else pd.DataFrame(columns=cols)
    return TrajectoryContext(metric_config={}, artifact_root=tmp_path, seed=0, model_id=model_id, refs=[],
                             records=recs, history=history)


def loss_records(steps, loss, model_id="run-a", **kw):
    n = len(steps)
    return pd.DataFrame({
        "metric": "loss", "measure": "loss", "status": "ok", "model_id": model_id,
        "step": np.asarray(steps, int), "tokens_seen": np.asarray(steps, int) * 1000,
        "value": loss, "task": kw.get("task"), "layer": None,
    }, index=range(n))


def by_measure(ms):
    return {m.measure: m for m in ms}


def test_records_curve_recovers_known_deceleration(tmp_path):
    steps = np.unique(np.geomspace(1, 262144, 300).astype(int))
    recs = pd.concat([
        loss_records(steps, law(steps, *TRUTH)),
        loss_records(steps, law(steps, *TRUTH) * 3, model_id="other-run"),  # another run: ignored
        loss_records(steps, np.ones(len(steps)), model_id="run-a").assign(metric="interference"),  # another metric
        loss_records(steps[:5], [9.0] * 5).assign(status="error"),  # failed rows: ignored
    ], ignore_index=True)
    ms = by_measure(DecelerationMetric(source="auto").measure_trajectory(ctx(tmp_path, recs)))
    assert ms["t_d"].status == "ok" and ms["t_d"].value == pytest.approx(5000.0, rel=1e-4)
    assert ms["r_d"].value == pytest.approx(0.02, abs=1e-6)
    assert ms["L_d"].value == pytest.approx(20.0 * 5000.0**-0.2, rel=1e-4)
    assert ms["loss_extrapolated"].value == pytest.approx(20.0 * 5000.0**-0.2 * (262144 / 5000.0) ** -0.02, rel=1e-4)
    assert ms["param_f1"].value == pytest.approx(0.3, rel=1e-4)
    fit = ms["t_d"].extra["fit"]
    assert fit["source"] == "records" and fit["preprocessing"]["smooth"] is False and min(fit["x"]) > 100
    assert ms["t_d"].unit == "steps" and ms["t_d"].n == len(fit["x"])


def test_tokens_axis_scales_t_d(tmp_path):
    steps = np.unique(np.geomspace(1, 262144, 300).astype(int))
    recs = loss_records(steps, law(steps, *TRUTH))
    ms = by_measure(DecelerationMetric(x="tokens_seen").measure_trajectory(ctx(tmp_path, recs)))
    assert ms["t_d"].value == pytest.approx(5000.0 * 1000, rel=1e-4) and ms["t_d"].unit == "tokens"
    assert ms["r_d"].value == pytest.approx(0.02, abs=1e-6)


def test_history_curve_with_authors_preprocessing(tmp_path):
    """mode=zsl on a dense per-step log with 0.5% noise: smoothing, subsampling and the
    transient cut apply (auto), the fit lands near the truth, and the stored inputs reproduce it."""
    steps = np.arange(0, 262145)
    rng = np.random.default_rng(0)
    loss = law(np.maximum(steps, 1), *TRUTH) * np.exp(rng.normal(0, 0.005, len(steps)))
    hist = pd.DataFrame({"step": steps, "loss": loss})
    ms = by_measure(DecelerationMetric(mode="zsl").measure_trajectory(ctx(tmp_path, history=hist)))
    fit = ms["t_d"].extra["fit"]
    assert fit["source"] == "history" and fit["preprocessing"]["smooth"] and fit["preprocessing"]["subsample"]
    assert len(fit["x"]) == 433
    # The authors' trailing window [t/1.2, t] averages the curve around the log-mean of the
    # window, t * exp(E log u) for u ~ U[1/1.2, 1] = t / 1.0925: the smoothed curve is
    # L(t / 1.0925), so t_d moves by that factor while L_d and r_d are unchanged.
    shift = np.exp(-(((1 * np.log(1) - 1) - (np.log(1 / 1.2) / 1.2 - 1 / 1.2)) / (1 - 1 / 1.2)))
    assert shift == pytest.approx(1.0925, abs=1e-4)
    assert ms["t_d"].value == pytest.approx(5000.0 * shift, rel=0.015)
    assert ms["r_d"].value == pytest.approx(0.02, abs=0.001)
    assert ms["L_d"].value == pytest.approx(20.0 * 5000.0**-0.2, rel=0.003)
    # reproducible from the record alone
    refit = fit_bnsl(fit["x"], fit["y"], mode=fit["mode"], n_breaks=fit["n_breaks"])
    assert refit.t_d == pytest.approx(ms["t_d"].value, rel=1e-9)
    # and the artifact holds the raw curve too
    art = json.loads((tmp_path / "run-a" / "fit.json").read_text())
    assert len(art["raw"]["loss"]) == len(steps) and art["params"] == fit["params"]


def test_source_history_without_log_raises_clearly(tmp_path):
    with pytest.raises(ValueError, match="no training log"):
        list(DecelerationMetric(source="history").measure_trajectory(ctx(tmp_path)))


def test_missing_tokens_column_raises_clearly(tmp_path):
    hist = pd.DataFrame({"step": np.arange(200, 5000), "loss": np.linspace(5, 3, 4800)})
    with pytest.raises(ValueError, match="no 'tokens_seen'"):
        list(DecelerationMetric(x="tokens_seen").measure_trajectory(ctx(tmp_path, history=hist)))


def test_no_curve_at_all_is_skipped(tmp_path):
    ms = list(DecelerationMetric().measure_trajectory(ctx(tmp_path)))
    assert {m.measure for m in ms} == {"t_d", "L_d", "r_d", "loss_extrapolated", "rsle"}
    assert all(m.status == "skipped" and "no ok loss:loss records" in m.message and "no training log" in m.message
               for m in ms)


@pytest.mark.parametrize("mode", ["robust", "zsl"])
def test_constant_and_short_curves_are_skipped_not_raised(tmp_path, mode):
    steps = np.arange(101, 2000, 10)
    ms = list(DecelerationMetric(mode=mode).measure_trajectory(ctx(tmp_path, loss_records(steps, np.full(len(steps), 2.5)))))
    assert all(m.status == "skipped" and "constant" in m.message for m in ms)
    short = loss_records([1, 2, 4, 8, 16, 32, 64, 128, 256], np.linspace(5, 3, 9))
    ms = list(DecelerationMetric(mode=mode, min_step=100).measure_trajectory(ctx(tmp_path, short)))
    assert all(m.status == "skipped" and "usable points" in m.message for m in ms)
    # the fitted inputs are kept even for a skipped fit
    assert ms[0].extra["fit"]["x"] == [128.0, 256.0]


def test_failed_fit_gives_error_records(tmp_path):
    steps = np.unique(np.geomspace(101, 262144, 200).astype(int))
    ms = list(DecelerationMetric(maxfev=1).measure_trajectory(ctx(tmp_path, loss_records(steps, law(steps, *TRUTH) * 1.1))))
    assert all(m.status == "error" and "BNSL fit failed" in m.message for m in ms)


def test_several_loss_tasks_need_a_choice(tmp_path):
    steps = np.unique(np.geomspace(1, 262144, 200).astype(int))
    recs = pd.concat([loss_records(steps, law(steps, *TRUTH), task="val"),
                      loss_records(steps, law(steps, *TRUTH) * 2, task="train")], ignore_index=True)
    with pytest.raises(ParameterError, match="loss:loss:train"):
        list(DecelerationMetric().measure_trajectory(ctx(tmp_path, recs)))
    ms = by_measure(DecelerationMetric(curve="loss:loss:train").measure_trajectory(ctx(tmp_path, recs)))
    assert ms["L_d"].value == pytest.approx(2 * 20.0 * 5000.0**-0.2, rel=1e-4)


def test_caballero_mode_through_the_metric(tmp_path):
    truth = (0.5, 20.0, 0.3, 0.4, 5000.0, 0.3)
    steps = np.unique(np.geomspace(10, 262144, 300).astype(int))
    grid = {"a": [0.0, 1.0, 0.5], "p_b": [12.5, 15.0, 2.5], "c0": [0.2, 0.4, 0.1], "c": [0.3, 0.5, 0.1],
            "p_d": [35.0, 40.0, 2.5], "f": [0.1, 0.5, 0.2]}
    ms = by_measure(DecelerationMetric(mode="caballero", grid=grid).measure_trajectory(ctx(tmp_path, loss_records(steps, law(steps, *truth)))))
    assert ms["t_d"].value == pytest.approx(5000.0, rel=1e-4)
    assert ms["param_a"].value == pytest.approx(0.5, rel=1e-4)
    assert ms["t_d"].extra["fit"]["preprocessing"]["min_step"] == 0.0


@pytest.mark.parametrize(
    "kw,key",
    [({"mode": "kaplan"}, "mode"), ({"n_breaks": 0}, "n_breaks"), ({"n_breaks": 1.5}, "n_breaks"),
     ({"break_guess": [1, 2]}, "break_guess"), ({"break_guess": -5}, "break_guess"), ({"source": "wandb"}, "source"),
     ({"x": "time"}, "x"), ({"smooth": "maybe"}, "smooth"), ({"grid": {"zz": [0, 1, 0.1]}}, "grid"),
     ({"grid": {"a": [1, 0, 0.1]}}, "grid.a"), ({"n_starts": 0}, "n_starts"), ({"target": 0}, "target"),
     ({"grid_engine": "gpu"}, "grid_engine")],
)
def test_bad_parameters_name_key_and_range(kw, key):
    with pytest.raises(ParameterError) as err:
        DecelerationMetric(**kw)
    assert err.value.key == key and err.value.allowed


def test_config_instantiates_with_every_documented_parameter():
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/metric/deceleration.yaml"))["deceleration"]
    assert node.pop("_target_") == "harness_plugins.metrics.deceleration.DecelerationMetric"
    metric = DecelerationMetric(**node)
    assert metric.name == "deceleration" and set(node) <= set(metric.params)


def test_plots_one_png_per_run(tmp_path):
    steps = np.unique(np.geomspace(1, 262144, 200).astype(int))
    rows = []
    for run, scale in (("run-a", 1.0), ("run/b", 1.5)):
        for m in DecelerationMetric().measure_trajectory(ctx(tmp_path, loss_records(steps, law(steps, *TRUTH) * scale, run), model_id=run)):
            rows.append({"metric": "deceleration", "measure": m.measure, "status": m.status, "model_id": run,
                         "extra": json.dumps(m.extra)})
    files = DecelerationMetric().plots(pd.DataFrame(rows), tmp_path / "figs")
    assert sorted(p.name for p in files) == ["deceleration_run-a.png", "deceleration_run_b.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files)


def test_irregular_history_is_not_smoothed(tmp_path):
    """The moving average runs over sample indices, so auto turns it off for irregular logs."""
    steps = np.unique(np.geomspace(1, 262144, 3000).astype(int))
    hist = pd.DataFrame({"step": steps, "loss": law(steps, *TRUTH)})
    ms = by_measure(DecelerationMetric(mode="zsl").measure_trajectory(ctx(tmp_path, history=hist)))
    prep = ms["t_d"].extra["fit"]["preprocessing"]
    guess = prep.pop("break_guess")
    assert prep == {"smooth": False, "subsample": True, "min_step": pytest.approx(100.0), "uniform_steps": False}
    assert guess == [pytest.approx(6000.0)]  # auto on the authors' run length = their constants
    assert ms["t_d"].value == pytest.approx(5000.0, rel=1e-4)  # unsmoothed: the exact break


SHORT_TRUTH = (0.0, 20.0, 0.2, -0.18, 60.0, 0.3)  # the same law, its break at step 60 of a 1500-step run


@pytest.mark.parametrize("mode", ["robust", "zsl"])
def test_auto_transient_cut_and_break_guess_adapt_to_a_short_run(tmp_path, mode):
    """A planted break at step 60 of a 1500-step log: min_step=auto and break_guess=auto scale the
    authors' 100 and 6000 steps (of 262,144) to this run and recover it; the literal constants
    (min_step=100) cut the break away, so no deceleration is found. (Smoothing off: the curve
    is exact, the authors' moving average would only blur it.)"""
    steps = np.arange(1, 1501)
    hist = pd.DataFrame({"step": steps, "loss": law(steps, *SHORT_TRUTH)})
    ms = by_measure(DecelerationMetric(mode=mode, source="history", smooth=False).measure_trajectory(ctx(tmp_path, history=hist)))
    prep = ms["t_d"].extra["fit"]["preprocessing"]
    assert prep["min_step"] == pytest.approx(1500 * 100 / 262144)
    assert prep["break_guess"] == ([pytest.approx(1500 * 6000 / 262144)] if mode == "zsl" else None)
    assert ms["t_d"].status == "ok" and ms["t_d"].value == pytest.approx(60.0, rel=0.05)
    assert ms["r_d"].value == pytest.approx(0.02, abs=0.01)
    literal = by_measure(DecelerationMetric(mode=mode, source="history", smooth=False, min_step=100,
                                            break_guess=[6000])
                         .measure_trajectory(ctx(tmp_path, history=hist)))
    assert literal["t_d"].status != "ok" or abs(literal["t_d"].value - 60.0) > 6.0


def test_transient_fraction_sets_the_auto_cut(tmp_path):
    steps = np.arange(1, 1001)
    hist = pd.DataFrame({"step": steps, "loss": law(steps, *SHORT_TRUTH)})
    ms = by_measure(DecelerationMetric(source="history", transient_fraction=0.01).measure_trajectory(
        ctx(tmp_path, history=hist)))
    assert ms["t_d"].extra["fit"]["preprocessing"]["min_step"] == pytest.approx(10.0)
    assert min(ms["t_d"].extra["fit"]["x"]) > 10
