"""The BNSL fitter against independent truths: the authors' preprocessing written as their
plain Python loops, noiseless and noisy synthetic curves with known parameters (the recovery
cases of dynamics_metrics.md section 1.1), the closed-form variance of r_d, a Monte Carlo
check of the reported standard errors, and degenerate inputs that must not raise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness_plugins.metrics.deceleration import bnsl
from harness_plugins.metrics.deceleration.bnsl import bnsl as law
from harness_plugins.metrics.deceleration.bnsl import fit_bnsl

TRUTH = {"b": 20.0, "c0": 0.2, "c1": -0.18, "d1": 5000.0, "f1": 0.3}


@pytest.fixture(scope="module")
def grid433() -> np.ndarray:
    """The authors' subsampled grid 110 ... 262144, transient steps dropped."""
    steps = np.arange(1, 262145)
    x = steps[bnsl.subsample_mask(steps)].astype(float)
    return x[x > 100]


def zsl_curve(x, b=20.0, c0=0.2, c1=-0.18, d1=5000.0, f1=0.3):
    return law(x, 0.0, b, c0, c1, d1, f1)


# ---- preprocessing, against the authors' loops ------------------------------------------------


def test_subsample_equals_authors_rule_on_every_step(grid433):
    steps = np.arange(1, 262145)
    authors = [s for s in steps if s % 10 ** max(0, min(math.floor(math.log10(s)) - 1, 3)) == 0 or s == steps[-1]]
    assert np.array_equal(steps[bnsl.subsample_mask(steps)], authors)
    assert len(grid433) == 433 and grid433[0] == 110 and grid433[-1] == 262144


def test_subsample_sparse_log_keeps_one_point_per_bucket():
    steps = np.arange(0, 50001, 7)  # logged every 7 steps, starting at step 0
    kept = steps[bnsl.subsample_mask(steps)]
    assert 0 not in kept and kept[-1] == steps[-1]
    widths = [10 ** max(0, min(math.floor(math.log10(s)) - 1, 3)) for s in kept[:-1]]
    buckets = [(w, s // w) for s, w in zip(kept[:-1], widths)]
    assert len(set(buckets)) == len(buckets)  # never two points in one bucket
    # every bucket that holds a logged step is represented
    all_buckets = {(10 ** max(0, min(math.floor(math.log10(s)) - 1, 3)), s // 10 ** max(0, min(math.floor(math.log10(s)) - 1, 3))) for s in steps if s > 0}
    assert set(buckets) | {(widths[-1], kept[-1] // widths[-1])} >= all_buckets - {(1000, steps[-1] // 1000)}


def test_log_moving_average_equals_authors_loop():
    rng = np.random.default_rng(1)
    y = rng.random(3000)
    expected = np.array([np.mean(y[int(j // 1.2) : j + 1]) for j in range(len(y))])
    np.testing.assert_allclose(bnsl.log_moving_average(y), expected, rtol=1e-12)


def test_preprocess_order_and_transients():
    steps = np.arange(0, 2001)
    x, y = bnsl.preprocess_zsl(steps, np.ones(len(steps)) * 2.0)
    assert x.min() == 110 and np.all(y == 2.0)
    assert list(x[:3]) == [110, 120, 130] and x[-1] == 2000


# ---- zsl recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [TRUTH, {"b": 12.0, "c0": 0.1, "c1": -0.08, "d1": 3000.0, "f1": 0.5}, {"b": 40.0, "c0": 0.3, "c1": -0.25, "d1": 20000.0, "f1": 0.2}],
)
def test_zsl_noiseless_recovers_parameters(grid433, params):
    fit = fit_bnsl(grid433, zsl_curve(grid433, **params))
    assert fit.ok, fit.message
    got = {"b": fit.value("b"), "c0": fit.value("c0"), "c1": fit.value("c1"), "d1": fit.t_d, "f1": fit.value("f1")}
    for k, v in params.items():
        assert got[k] == pytest.approx(v, rel=1e-4), k
    assert fit.r_d == pytest.approx(params["c0"] + params["c1"], abs=1e-6)
    assert fit.L_d == pytest.approx(params["b"] * params["d1"] ** -params["c0"], rel=1e-4)
    assert fit.rsle < 1e-8


def test_zsl_two_breaks_noiseless(grid433):
    truth = (0.0, 20.0, 0.2, -0.1, 3000.0, 0.3, -0.05, 50000.0, 0.5)
    fit = fit_bnsl(grid433, law(grid433, *truth), n_breaks=2)
    assert fit.ok, fit.message
    np.testing.assert_allclose(fit.law_params(), truth, rtol=1e-4)
    np.testing.assert_allclose(fit.segment_slopes(), [-0.2, -0.1, -0.05], atol=1e-6)


@pytest.mark.parametrize("d1", [5000.0, 4000.0, 5877.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zsl_noisy_recovery_within_published_tolerances(grid433, d1, seed):
    rng = np.random.default_rng(seed)
    y = zsl_curve(grid433, d1=d1) * np.exp(rng.normal(0.0, 0.005, len(grid433)))
    fit = fit_bnsl(grid433, y)
    assert fit.ok, fit.message
    assert abs(fit.t_d / d1 - 1) < 0.015
    assert abs(fit.r_d - 0.02) < 0.001
    assert abs(fit.L_d / (20.0 * d1**-0.2) - 1) < 0.003
    assert 0.003 < fit.rsle < 0.007  # the residual is the noise (sigma 0.005)


def test_reported_stderr_matches_monte_carlo_spread(grid433):
    rng = np.random.default_rng(7)
    t_d, r_d, se_t, se_r = [], [], [], []
    for _ in range(40):
        fit = fit_bnsl(grid433, zsl_curve(grid433) * np.exp(rng.normal(0.0, 0.005, len(grid433))))
        se = fit.derived_stderr()
        t_d.append(fit.t_d), r_d.append(fit.r_d), se_t.append(se["t_d"]), se_r.append(se["r_d"])
    assert np.std(t_d) / np.mean(se_t) == pytest.approx(1.0, abs=0.35)
    assert np.std(r_d) / np.mean(se_r) == pytest.approx(1.0, abs=0.35)


def test_derived_stderr_closed_forms(grid433):
    rng = np.random.default_rng(3)
    fit = fit_bnsl(grid433, zsl_curve(grid433) * np.exp(rng.normal(0.0, 0.005, len(grid433))))
    names, cov = fit.names, fit.pcov
    i0, i1, idl = names.index("c0"), names.index("c1"), names.index("d1log")
    se = fit.derived_stderr(target=262144.0)
    assert se["r_d"] == pytest.approx(math.sqrt(cov[i0, i0] + cov[i1, i1] + 2 * cov[i0, i1]), rel=1e-5)
    assert se["t_d"] == pytest.approx(fit.t_d * math.sqrt(cov[idl, idl]), rel=1e-5)
    # log L_d = log b - c0 * d1log: gradient (1/b, -d1log, -c0) on (b, c0, d1log)
    ib = names.index("b")
    g = np.zeros(len(names))
    g[ib], g[i0], g[idl] = 1 / fit.value("b"), -fit.value("d1log"), -fit.value("c0")
    assert se["L_d"] == pytest.approx(fit.L_d * math.sqrt(g @ cov @ g), rel=1e-4)
    assert fit.extrapolate(fit.t_d) == pytest.approx(fit.L_d)
    assert fit.extrapolate(262144.0) == pytest.approx(fit.L_d * (262144.0 / fit.t_d) ** -fit.r_d)


def test_multistart_escapes_a_bad_break_guess(grid433):
    y = zsl_curve(grid433, d1=40000.0, f1=0.2)
    single = fit_bnsl(grid433, y, break_guess=[768.0])
    assert not (single.ok and single.t_d == pytest.approx(40000.0, rel=1e-2))  # the bad start alone fails
    multi = fit_bnsl(grid433, y, break_guess=[768.0], n_starts=4)
    assert multi.ok and multi.t_d == pytest.approx(40000.0, rel=1e-4)
    bounded = fit_bnsl(grid433, y, bounds=True, n_starts=4)
    assert bounded.ok and bounded.t_d == pytest.approx(40000.0, rel=1e-4)
    assert bounded.p0 is not None and np.log(grid433.min()) <= bounded.value("d1log") <= np.log(grid433.max())


# ---- caballero mode -------------------------------------------------------------------------------

SMALL_GRID = {"a": (0.0, 2.0, 0.5), "p_b": (10.0, 20.0, 2.5), "c0": (0.0, 0.6, 0.2), "c": (0.0, 0.8, 0.2),
              "p_d": (30.0, 45.0, 2.5), "f": (0.1, 0.7, 0.2)}


def test_caballero_recovers_law_with_limit_term(grid433):
    truth = (0.5, 20.0, 0.3, 0.4, 5000.0, 0.3)
    fit = fit_bnsl(grid433, law(grid433, *truth), mode="caballero", grid=SMALL_GRID, grid_engine="brute")
    assert fit.ok, fit.message
    np.testing.assert_allclose(fit.law_params(), truth, rtol=1e-4)
    assert fit.L_d == pytest.approx(0.5 + 20.0 * 5000.0**-0.3, rel=1e-4)
    assert fit.r_d == pytest.approx(0.7, rel=1e-4)


def test_caballero_two_breaks_with_limit_term(grid433):
    truth = (0.5, 20.0, 0.3, 0.4, 2000.0, 0.3, 0.5, 60000.0, 0.4)
    grid = {"a": (0.0, 1.0, 0.5), "p_b": (12.5, 15.0, 2.5), "c0": (0.2, 0.6, 0.2), "c": (0.2, 0.8, 0.2),
            "p_d1": (30.0, 37.5, 2.5), "p_d2": (45.0, 52.5, 2.5), "f": (0.3, 0.7, 0.2)}
    fit = fit_bnsl(grid433, law(grid433, *truth), mode="caballero", n_breaks=2, grid=grid, bounds=True)
    assert fit.ok, fit.message
    np.testing.assert_allclose(fit.law_params(), truth, rtol=1e-4)


def test_caballero_bounds_rescue_a_limit_outside_the_grid(grid433):
    """The repo's unconstrained LM stalls when the grid's best point sits at a corner (a
    beyond the grid); the bounded refinement recovers the truth."""
    truth = (1.5, 20.0, 0.3, 0.4, 5000.0, 0.3)
    grid = {**SMALL_GRID, "a": (0.0, 1.0, 0.5)}
    fit = fit_bnsl(grid433, law(grid433, *truth), mode="caballero", grid=grid, bounds=True)
    assert fit.ok
    np.testing.assert_allclose(fit.law_params(), truth, rtol=1e-4)


def test_grid_engines_agree():
    x = np.geomspace(10, 1e5, 60)
    y = law(x, 0.3, 8.0, 0.25, 0.5, 700.0, 0.4) * np.exp(np.random.default_rng(0).normal(0, 0.01, 60))
    grid = {"a": (0.0, 1.0, 0.25), "p_b": (5.0, 15.0, 2.5), "c0": (0.0, 0.6, 0.2), "c": (0.0, 1.0, 0.25),
            "p_d": (20.0, 40.0, 5.0), "f": (0.0, 0.8, 0.4)}  # f = 0 included: "no break" grid points
    a = bnsl.caballero_grid_best(x, y, 1, grid, "brute")
    b = bnsl.caballero_grid_best(x, y, 1, grid, "vectorized")
    np.testing.assert_array_equal(a, b)
    # two breaks, per-break ranges
    y2 = law(x, 0.3, 8.0, 0.25, 0.5, 300.0, 0.4, 0.3, 5000.0, 0.2)
    grid2 = {"a": (0.0, 0.6, 0.3), "p_b": (5.0, 15.0, 5.0), "c0": (0.2, 0.4, 0.1), "c": (0.2, 0.8, 0.3),
             "p_d1": (20.0, 30.0, 5.0), "p_d2": (35.0, 45.0, 5.0), "f": (0.0, 0.6, 0.3)}
    best2 = bnsl.caballero_grid_best(x, y2, 2, grid2, "brute")
    np.testing.assert_array_equal(best2, bnsl.caballero_grid_best(x, y2, 2, grid2, "vectorized"))
    # chunk borders do not change the answer
    ranges = bnsl._caballero_ranges(grid2, 2)
    np.testing.assert_array_equal(bnsl._repar(bnsl._grid_vectorized(x, np.log(y2 + 1), ranges, chunk=7)), best2)


def test_f_zero_means_no_break():
    x = np.geomspace(1, 1e4, 20)
    np.testing.assert_allclose(law(x, 0.0, 3.0, 0.5, 0.7, 100.0, 0.0), 3.0 * x**-0.5)


# ---- degenerate input: a status, never an exception ----------------------------------------------


@pytest.mark.parametrize("mode", ["zsl", "caballero"])
def test_constant_curve_is_degenerate(mode):
    fit = fit_bnsl(np.arange(101, 400.0), np.full(299, 3.2), mode=mode)
    assert fit.status == "degenerate" and "constant" in fit.message


def test_too_few_points_is_insufficient():
    fit = fit_bnsl([200.0, 300.0, 400.0, 500.0], [3.0, 2.9, 2.8, 2.75])
    assert fit.status == "insufficient" and "needs >= 6" in fit.message


def test_nans_and_nonpositive_points_are_dropped_with_a_warning(grid433):
    y = zsl_curve(grid433)
    y[[3, 50, 200]] = [np.nan, np.inf, -1.0]
    fit = fit_bnsl(grid433, y)
    assert fit.ok and fit.n_dropped == 3 and "dropped 3" in fit.warnings[0]
    assert fit.t_d == pytest.approx(5000.0, rel=1e-4)
    assert fit_bnsl([np.nan] * 10, [np.nan] * 10).status == "insufficient"


def test_optimizer_failure_is_a_status(grid433):
    fit = fit_bnsl(grid433, zsl_curve(grid433) * 1.1, maxfev=1)
    assert fit.status == "failed" and fit.params is None
    assert fit.message.startswith("RuntimeError: Optimal parameters not found")  # one prefix, not nested


def test_oversized_grid_is_a_failure_not_a_hang(grid433):
    fit = fit_bnsl(grid433, zsl_curve(grid433), mode="caballero", n_breaks=3)
    assert fit.status == "failed" and "coarser grid" in fit.message


def test_break_beyond_the_data_is_flagged():
    x = np.geomspace(110, 262144, 300)
    fit = fit_bnsl(x, law(x, 0.0, 20.0, 0.2, -0.18, 350000.0, 1.0))
    assert fit.ok and fit.t_d == pytest.approx(350000.0, rel=1e-4)
    assert any("outside the fitted range" in w for w in fit.warnings)
    inside = fit_bnsl(x, law(x, 0.0, 20.0, 0.2, -0.18, 5000.0, 0.3))
    assert not any("outside" in w for w in inside.warnings)
