"""Property-based tests (hypothesis) of the metric maths: ranges, invariances, degenerate input.

Each property is a mathematical fact about the definition, checked on random inputs:
* interference D = 1 - |sum x| / sum |x| lies in [0, 1], is invariant under x -> c x (c != 0,
  either sign) and under permuting the examples, and |mean x| = (1 - D) * mean |x|;
* transport's normalised field |u| / rms(u) is invariant under u -> c u and permutes with u;
* subspace f_top(k) lies in [0, 1], is non-decreasing in k, is 1 for a complete basis and is
  invariant under g -> c g; the subspace overlap lies in [0, 1];
* the fitters (time_scaling's power law, deceleration's BNSL) return a status, never raise,
  on constant curves, too few points and NaN/Inf/negative values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness_plugins.metrics.deceleration.bnsl import fit_bnsl
from harness_plugins.metrics.interference.stats import interference_stats
from harness_plugins.metrics.subspace.spectrum import f_top, subspace_overlap
from harness_plugins.metrics.time_scaling.fit import fit_power_law
from harness_plugins.metrics.transport.field import normalise

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
vectors = arrays(np.float64, st.integers(1, 60), elements=finite)
scales = st.floats(1e-3, 1e3).flatmap(lambda c: st.sampled_from([c, -c]))


# ---- interference ---------------------------------------------------------------------------


@FAST
@given(vectors, scales, st.randoms(use_true_random=False))
def test_interference_D_range_scaling_and_permutation(x, c, rnd):
    s = interference_stats(x)
    if not np.any(x):
        assert math.isnan(s.D)  # all changes zero: D undefined, reported as NaN
        return
    assert 0.0 <= s.D <= 1.0 + 1e-12
    assert s.dL == pytest.approx((1 - s.D) * s.M, rel=1e-9, abs=1e-12 * s.M)
    perm = list(x)
    rnd.shuffle(perm)
    assert interference_stats(np.array(perm)).D == pytest.approx(s.D, abs=1e-9)
    assert interference_stats(c * x).D == pytest.approx(s.D, abs=1e-9)


@FAST
@given(arrays(np.float64, st.integers(1, 30), elements=st.floats(1e-6, 1e6)))
def test_interference_one_sign_is_zero_and_cancellation_is_one(x):
    assert interference_stats(x).D == pytest.approx(0.0, abs=1e-12)
    assert interference_stats(-x).D == pytest.approx(0.0, abs=1e-12)
    assert interference_stats(np.concatenate([x, -x])).D == pytest.approx(1.0, abs=1e-9)


def test_interference_rejects_non_finite_with_a_clear_error():
    with pytest.raises(ValueError, match="1 of 3 per-example values are not finite"):
        interference_stats([1.0, float("nan"), 2.0])


# ---- transport field ------------------------------------------------------------------------


@FAST
@given(arrays(np.float32, st.integers(1, 80), elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False)),
       st.floats(1e-3, 1e3),
       st.sampled_from(["rms", "robust"]), st.randoms(use_true_random=False))
def test_transport_normalised_field_scale_invariant_and_permutation_equivariant(u, c, how, rnd):
    # NOTE: float32 fields (what checkpoints hold). A float64 tensor whose RMS underflows
    # float32 (|u| ~ 1e-85) normalises to NaN: reported to the transport plugin's owner.
    x = normalise(u, how)
    assert np.all(x >= 0) and np.all(np.isfinite(x))
    np.testing.assert_allclose(normalise(c * u, how), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalise(-u, how), x, rtol=1e-6, atol=1e-7)
    perm = np.array(rnd.sample(range(len(u)), len(u)))
    np.testing.assert_allclose(normalise(u[perm], how), x[perm], rtol=1e-5, atol=1e-6)
    if how == "rms" and np.any(u):
        assert float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(1.0, rel=1e-5)


# ---- subspace spectrum ----------------------------------------------------------------------


@FAST
@given(st.integers(1, 12), st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_f_top_range_monotone_complete_and_scale_invariant(n, seed, c):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    g = rng.standard_normal(n)
    ks = list(range(1, n + 1))
    f = f_top(q, g, ks)
    vals = [f[k] for k in ks]
    assert all(-1e-12 <= v <= 1 + 1e-9 for v in vals)
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:]))
    assert vals[-1] == pytest.approx(1.0, rel=1e-9)  # a complete basis holds all of ||g||^2
    scaled = f_top(q, c * g, ks)
    assert [scaled[k] for k in ks] == pytest.approx(vals, rel=1e-9, abs=1e-12)
    k = max(1, n // 2)
    q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    assert -1e-12 <= subspace_overlap(q, q2, k) <= 1 + 1e-9
    assert subspace_overlap(q, q, k) == pytest.approx(1.0, rel=1e-9)


def test_f_top_zero_gradient_is_a_clear_error():
    with pytest.raises(ValueError, match="gradient is exactly zero"):
        f_top(np.eye(3), np.zeros(3), [1])


# ---- fitters on degenerate input ------------------------------------------------------------

bad_values = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 30), st.floats(1e-3, 1e3), st.lists(bad_values, max_size=5), st.integers(0, 2**31 - 1))
def test_fitters_report_status_on_constant_curves(n, level, bad, seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(1, 1e4, n + len(bad)))
    y = np.concatenate([np.full(n, level), bad])
    rng.shuffle(y)
    pl = fit_power_law(x, y)
    assert pl.status == "skipped" and pl.reason
    b = fit_bnsl(x, y)
    assert b.status in ("insufficient", "degenerate") and b.message


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 4), st.lists(bad_values, max_size=6), st.integers(0, 2**31 - 1))
def test_fitters_report_status_on_too_few_points(n, bad, seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(1, 1e4, n + len(bad)))
    y = np.concatenate([3.0 * x[:n] ** -0.3 + 0.1, bad])
    pl = fit_power_law(x, y, min_points=5)
    assert pl.status == "skipped" and "usable points" in pl.reason
    b = fit_bnsl(x, y)
    assert b.status == "insufficient" and "usable points" in b.message


@settings(max_examples=15, deadline=None)
@given(arrays(np.float64, st.integers(0, 25), elements=st.floats(allow_nan=True, allow_infinity=True)),
       st.integers(0, 2**31 - 1))
def test_fitters_never_raise_on_arbitrary_values(y, seed):
    x = np.sort(np.random.default_rng(seed).uniform(1, 1e4, len(y)))
    assert fit_power_law(x, y).status in ("ok", "skipped")
    assert fit_bnsl(x, y).status in ("ok", "insufficient", "degenerate", "failed")


def test_power_law_fit_recovers_a_known_exponent():
    """Control: the same fitter does return ok, with the true exponent, on clean data."""
    tau = np.logspace(0, 4, 40)
    res = fit_power_law(tau, 2.0 * tau ** -0.33 + 0.05)
    assert res.status == "ok" and res.params["alpha"] == pytest.approx(0.33, rel=1e-3)
