"""Property test (hypothesis): generated loss logs through ``loss_log`` + ``deceleration`` +
``time_scaling`` never raise, never give an unexplained ``error``, stay within a stated memory
bound, and recover known parameters on clean curves.

Generated logs mix NaN, inf and negative rows, duplicated and unsorted steps, restarts (the
step goes back), constant curves, 1-3 points, loss floors and one or two breaks. Each log is
written as a CSV file and read by the real `LossLogFamily`; its history goes to both metrics
through a real `TrajectoryContext`. A log with no usable row at all is refused by the family
with a `ConfigError` naming the file (the run stops before any work, one clear line); that
is the only exception allowed.

Memory bound (measured with tracemalloc below): deceleration + time_scaling on a 10**6-row
log allocate at most 400 bytes per row over the log itself (< 400 MiB at 10**6 rows; measured
about 110 MiB), and the fits themselves run on a bounded number of points (at most
`robust.MAX_POINTS` or the log bins).
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness.api import ConfigError, TrajectoryContext
from harness_plugins.metrics.deceleration import DecelerationMetric
from harness_plugins.metrics.deceleration.bnsl import bnsl as law
from harness_plugins.metrics.time_scaling import TimeScalingMetric
from harness_plugins.models.loss_log import LossLogFamily
from harness_plugins.models.loss_log.readers import normalise_log

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHAPES = ("power", "floor", "one_break", "two_breaks", "constant", "crash")


def shape_curve(shape: str, steps: np.ndarray) -> np.ndarray:
    x = np.maximum(steps, 1.0)
    return {
        "power": 6.0 * x**-0.3,
        "floor": 0.8 + 6.0 * x**-0.4,
        "one_break": law(x, 0.1, 8.0, 0.5, -0.4, 0.05 * x.max() + 2, 0.3),
        "two_breaks": law(x, 0.0, 8.0, 0.5, -0.3, 0.02 * x.max() + 2, 0.3, -0.15, 0.3 * x.max() + 3, 0.3),
        "constant": np.full(len(x), 2.5),
        "crash": 3.0 * np.exp(-x / (0.1 * x.max() + 1)) + 1e-9,
    }[shape]


@st.composite
def loss_logs(draw) -> pd.DataFrame:
    n = draw(st.sampled_from([1, 2, 3]) | st.integers(4, 3000))
    shape = draw(st.sampled_from(SHAPES))
    steps = np.arange(1, n + 1, dtype=float) * draw(st.sampled_from([1, 10]))
    loss = shape_curve(shape, steps) * np.exp(draw(st.sampled_from([0.0, 0.01])) * np.random.default_rng(n).normal(size=n))
    df = pd.DataFrame({"step": steps, "loss": loss, "learning_rate": 1e-3})
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    for value, frac in (("nan", draw(st.sampled_from([0, 0.05]))), ("inf", draw(st.sampled_from([0, 0.02]))),
                        ("neg", draw(st.sampled_from([0, 0.05, 1.0])))):
        idx = rng.random(n) < frac
        df.loc[idx, "loss"] = {"nan": np.nan, "inf": np.inf, "neg": -1.0}[value]
    if draw(st.booleans()) and n > 3:  # a restart: steps from the middle are logged again
        k = n // 2
        df = pd.concat([df, df.iloc[k : k + max(1, n // 10)]], ignore_index=True)
    if draw(st.booleans()):  # duplicated steps
        df = pd.concat([df, df.sample(frac=0.1, random_state=1)], ignore_index=True)
    if draw(st.booleans()):  # unsorted
        df = df.sample(frac=1.0, random_state=2).reset_index(drop=True)
    return df


def run_metrics(history: pd.DataFrame, tmp: Path, model_id: str = "log") -> list:
    ctx = TrajectoryContext(metric_config={}, artifact_root=tmp, seed=0, model_id=model_id, refs=[],
                            records=pd.DataFrame(columns=["metric", "measure", "status", "model_id", "step",
                                                          "value", "task", "layer", "scope"]),
                            history=history)
    return list(DecelerationMetric().measure_trajectory(ctx)) + list(TimeScalingMetric().measure_trajectory(ctx))


@SETTINGS
@given(loss_logs())
def test_generated_logs_never_raise_and_never_error(df):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.csv"
        df.to_csv(path, index=False)
        try:
            fam = LossLogFamily(path=str(path))
            fam.checkpoints()
        except ConfigError as exc:  # nothing usable in the file: refused with the file's name
            assert "log.csv" in str(exc) and "no rows with a numeric step and a finite 'loss'" in str(exc)
            finite = np.isfinite(pd.to_numeric(df["loss"], errors="coerce").to_numpy(float))
            assert not finite.any()
            return
        hist = fam.history("log")
        ms = run_metrics(hist, Path(d))
    assert ms, "no measurements"
    for m in ms:
        assert m.status in ("ok", "skipped"), f"{m.measure}: {m.status} {m.message}"
        if m.status == "skipped":
            assert m.message and len(m.message) > 10
        if m.status == "ok":
            assert m.value is None or np.isfinite(m.value) or m.measure.startswith("param_")
    bad = ~np.isfinite(pd.to_numeric(df["loss"], errors="coerce").to_numpy(float)) | (df["loss"].to_numpy(float) <= 0)
    if bad.any():  # every dropped row is said in the headline records
        heads = [m for m in ms if m.measure in ("t_d", "alpha")]
        assert all(m.warning and "dropped" in m.warning for m in heads), [m.warning for m in heads]


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.sampled_from([0.0, 0.3, 1.0]), c0=st.floats(0.2, 0.6), drop=st.floats(0.4, 0.9),
       d1_frac=st.floats(0.01, 0.2), f1=st.floats(0.1, 0.6))
def test_clean_logs_recover_known_deceleration(a, c0, drop, d1_frac, f1):
    """A clean per-step log of a planted BNSL (floor a, break at d1, slope c0 -> c0 + c1):
    deceleration's default recovers t_d, r_d and the floor."""
    n = 5000
    c1 = -drop * c0
    d1 = d1_frac * n
    assume(c0 + c1 > 0.02)
    steps = np.arange(1, n + 1)
    hist = pd.DataFrame({"step": steps, "loss": law(steps, a, 10.0, c0, c1, d1, f1)})
    with tempfile.TemporaryDirectory() as d:
        ms = {m.measure: m for m in run_metrics(hist, Path(d))}
    assert ms["t_d"].status == "ok", ms["t_d"].message
    assert ms["t_d"].value == pytest.approx(d1, rel=0.1)
    assert ms["r_d"].value == pytest.approx(c0 + c1, abs=0.02)
    assert ms["param_a"].value == pytest.approx(a, abs=0.05)


def test_clean_power_law_recovers_time_scaling_exponent():
    steps = np.arange(1, 3001)
    hist = pd.DataFrame({"step": steps, "loss": 4.0 * (steps * 0.5) ** -0.34 + 0.05, "learning_rate": 0.5})
    with tempfile.TemporaryDirectory() as d:
        ms = {m.measure: m for m in run_metrics(hist, Path(d))}
    assert ms["alpha"].value == pytest.approx(0.34, abs=0.01) and ms["L0"].value == pytest.approx(0.05, abs=0.01)
    assert ms["t_d"].status == "skipped" and ms["t_d"].message.startswith("no deceleration in this range")


def test_million_row_log_bounded_memory_and_time():
    """10**6 rows with NaN/inf/negative rows, a restart and duplicates through loss_log's
    normalisation and both metrics: at most 400 bytes per row traced (see the module docstring)."""
    n = 1_000_000
    steps = np.arange(1, n + 1, dtype=float)
    loss = law(steps, 0.5, 10.0, 0.4, -0.3, 20_000.0, 0.3)
    raw = pd.DataFrame({"step": steps, "loss": loss, "learning_rate": 1e-4})
    raw.loc[::1000, "loss"] = np.nan
    raw.loc[5::1000, "loss"] = np.inf
    raw.loc[7::1000, "loss"] = -1.0
    raw = pd.concat([raw, raw.iloc[500_000:500_100]], ignore_index=True)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        tracemalloc.start()
        try:
            hist = normalise_log(raw, step_key="step", loss_key="loss", lr_key="learning_rate", tokens_key=None,
                                 tokens_per_step=None, where="big.csv")
            ms = {m.measure: m for m in run_metrics(hist, Path(d))}
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        wall = time.perf_counter() - t0
    assert ms["t_d"].status == "ok" and ms["t_d"].value == pytest.approx(20_000.0, rel=0.02), ms["t_d"].message
    assert ms["param_a"].value == pytest.approx(0.5, rel=0.02)
    assert "dropped 3100 of 1000100 rows" in ms["t_d"].warning and "1 restart" in ms["t_d"].warning
    assert ms["alpha"].status in ("ok", "skipped")
    assert peak < 400 * n, f"peak {peak / 2**20:.0f} MiB for {n} rows"
    print(f"10**6 rows: peak traced {peak / 2**20:.0f} MiB, {wall:.1f} s")
