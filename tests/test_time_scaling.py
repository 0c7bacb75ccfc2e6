"""The one-third time-scaling fit: synthetic truths, the published mechanism, the non-peaked control."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from harness.api import CheckpointRef, TrajectoryContext
from harness_plugins.metrics.time_scaling import TimeScalingMetric
from harness_plugins.metrics.time_scaling.fit import fit_power_law, local_slopes
from harness_plugins.models.toy_softmax import ToySoftmaxFamily

PYTHIA_STEPS = np.array([128, 256, 512, 1000, 2000, 3000, 6000, 12000, 16000, 32000, 48000, 79000, 143000])


@pytest.mark.parametrize("tau", [np.logspace(-2, 2, 40), PYTHIA_STEPS * 1e-3], ids=["log40", "pythia-grid"])
def test_recovers_one_third_with_log_noise(tau):
    """L = 2 tau^(-1/3) + 1.5 with 0.5% log-noise: alpha within 0.015, L0 within 0.06 (all reps)."""
    rng = np.random.default_rng(0)
    alphas, l0s = [], []
    for _ in range(20):
        loss = (2 * tau ** (-1 / 3) + 1.5) * np.exp(rng.normal(0, 0.005, tau.shape))
        fit = fit_power_law(tau, loss)
        assert fit.status == "ok"
        alphas.append(fit.params["alpha"])
        l0s.append(fit.params["L0"])
    assert np.max(np.abs(np.array(alphas) - 1 / 3)) < 0.015
    assert np.max(np.abs(np.array(l0s) - 1.5)) < 0.06


def test_local_slopes_of_exact_power_law():
    tau = np.logspace(0, 3, 61)
    slopes = local_slopes(tau, 3 * tau**-0.4 + 0.2, l0=0.2, decades=0.5)
    assert len(slopes) == 6
    assert all(abs(s["slope"] - 0.4) < 1e-9 for s in slopes)


def test_last_local_slope_window_ends_at_the_end_of_the_run():
    """The one_third default's grid: tau from 4.5e3 to 4e5 (1.95 decades, not a whole number of
    0.5-decade windows). The last window must end at tau_max and measure the late slope of a
    curve whose slope changes from 0.2 to 0.5 at tau = 1.2e5 (planted; the old first-point
    anchoring ended the last window at 1.42e5)."""
    tau = np.geomspace(4.5e3, 4e5, 40)
    knee = 1.2e5
    loss = np.where(tau < knee, (tau / knee) ** -0.2, (tau / knee) ** -0.5)
    slopes = local_slopes(tau, loss, l0=0.0, decades=0.5)
    last = slopes[-1]
    assert last["tau_hi"] == pytest.approx(4e5) and last["tau_lo"] == pytest.approx(4e5 / 10**0.5)
    assert [s["tau_lo"] for s in slopes] == sorted(s["tau_lo"] for s in slopes)  # increasing tau
    assert slopes[0]["slope"] == pytest.approx(0.2, abs=1e-9)  # before the knee: the early slope
    assert last["slope"] == pytest.approx(0.5, abs=1e-9)  # the asymptotic slope, all after the knee


@pytest.mark.parametrize("curve", [np.full(20, 2.0), np.array([1.0, np.nan, 2.0]), np.array([])])
def test_degenerate_curves_give_status_not_exception(curve):
    fit = fit_power_law(np.arange(1, len(curve) + 1, dtype=float), curve)
    assert fit.status == "skipped" and fit.reason


def _trajectory(family: ToySoftmaxFamily, model_id: str) -> TrajectoryContext:
    refs = [r for r in family.checkpoints() if r.model_id == model_id]
    return TrajectoryContext(metric_config={}, artifact_root=None, seed=0, model_id=model_id, refs=refs,
                             records=pd.DataFrame(columns=["metric", "measure", "status", "scope", "step", "value"]),
                             history=family.history(model_id))


def _by_measure(measurements):
    return {m.measure: m for m in measurements if m.step is None}


def test_published_mechanism_short_run(tmp_path):
    """SGD, d=32, V=128, B=1024, zero init, T=1e-3, lr=100, 5k steps: alpha in [0.33, 0.42] on
    [500, 5000] (the research note's short check of the paper's mechanism)."""
    fam = ToySoftmaxFamily(d=32, vocab=128, temperature=1e-3, lr=100.0, batch_size=1024, steps=5000,
                           n_checkpoints=8, workdir=str(tmp_path))
    peaked = _by_measure(TimeScalingMetric(fit_min_step=500, fit_max_step=5000).measure_trajectory(
        _trajectory(fam, "toy_softmax/T=0.001,lr=100,seed=0")))
    assert 0.33 <= peaked["alpha"].value <= 0.42, peaked["alpha"]
    assert peaked["power_law"].value == 1.0, peaked["power_law"].message


def test_non_peaked_control_is_flagged(tmp_path):
    """The published settings (SGD lr=30) with T=0.1: the target is learned exactly, the loss
    crashes exponentially, and the run is flagged as no power law; T=1e-3 beside it is not."""
    fam = ToySoftmaxFamily(d=32, vocab=128, temperature=[1e-3, 1e-1], lr=30.0, batch_size=1024, steps=2000,
                           n_checkpoints=8, workdir=str(tmp_path))
    control = _by_measure(TimeScalingMetric().measure_trajectory(_trajectory(fam, "toy_softmax/T=0.1,lr=30,seed=0")))
    assert control["power_law"].value == 0.0 and control["power_law"].warning.startswith("no power law")
    peaked = _by_measure(TimeScalingMetric().measure_trajectory(_trajectory(fam, "toy_softmax/T=0.001,lr=30,seed=0")))
    assert peaked["power_law"].value == 1.0, peaked["power_law"].message


@pytest.mark.slow
def test_published_mechanism_full_30k_steps(tmp_path):
    """The paper's setting: SGD lr=30, T=1e-3, 30k steps: alpha in [0.34, 0.40] fitted on [300, 30000]."""
    fam = ToySoftmaxFamily(d=32, vocab=128, temperature=[1e-3, 1e-1], lr=30.0, batch_size=1024, steps=30000,
                           n_checkpoints=8, workdir=str(tmp_path))
    peaked = _by_measure(TimeScalingMetric(fit_min_step=300, fit_max_step=30000).measure_trajectory(
        _trajectory(fam, "toy_softmax/T=0.001,lr=30,seed=0")))
    assert 0.34 <= peaked["alpha"].value <= 0.40, peaked["alpha"]
    control = _by_measure(TimeScalingMetric(fit_min_step=300, fit_max_step=30000).measure_trajectory(
        _trajectory(fam, "toy_softmax/T=0.1,lr=30,seed=0")))
    assert control["power_law"].value == 0.0


def test_uses_loss_records_and_logit_scale(tmp_path):
    steps = np.array([0, 10, 20, 40, 80, 160, 320, 640, 1280])
    rows = []
    for s in steps:
        rows.append({"metric": "loss", "measure": "loss", "status": "ok", "scope": "checkpoint", "step": s,
                     "value": 2 * max(s, 1) ** (-1 / 3) + 0.1})
        rows.append({"metric": "loss", "measure": "logit_std", "status": "ok", "scope": "checkpoint", "step": s,
                     "value": 0.5 * max(s, 1) ** (1 / 3)})
    refs = [CheckpointRef("f", "m", "s", int(s), learning_rate=1.0) for s in steps]
    ctx = TrajectoryContext(metric_config={}, artifact_root=tmp_path, seed=0, model_id="m", refs=refs,
                            records=pd.DataFrame(rows), history=None)
    out = _by_measure(TimeScalingMetric().measure_trajectory(ctx))
    assert abs(out["alpha"].value - 1 / 3) < 1e-3 and abs(out["L0"].value - 0.1) < 1e-3
    assert abs(out["logit_scale_exponent"].value - 1 / 3) < 1e-6
    assert json.loads(json.dumps(out["alpha"].extra))["source"] == "loss records"
