"""Relation-table statistics agree with direct scipy computations and with closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from harness.report import stats as S


@pytest.fixture
def xy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=25)
    y = 0.6 * x + rng.normal(size=25)
    x[5] = x[6]  # a tie
    y[7] = y[8]
    return x, y


def test_vectorised_statistics_equal_scipy(xy):
    x, y = xy
    assert S.spearman_batch(x[None], y[None])[0] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert S.kendall_batch(x[None], y[None])[0] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(x), size=(7, len(x)))  # resamples with many ties
    for i in range(7):
        assert S.kendall_batch(x[idx], y[idx])[i] == pytest.approx(stats.kendalltau(x[idx[i]], y[idx[i]]).statistic)
        assert S.spearman_batch(x[idx], y[idx])[i] == pytest.approx(stats.spearmanr(x[idx[i]], y[idx[i]]).statistic)


@pytest.mark.parametrize("ours, theirs", [("spearman", lambda a, b: stats.spearmanr(a, b).statistic),
                                          ("kendall", lambda a, b: stats.kendalltau(a, b).statistic)])
def test_bootstrap_ci_equals_scipy_bootstrap_of_scipy_statistic(xy, ours, theirs):
    x, y = xy
    lo, hi = S.bootstrap_ci(x, y, ours, n_resamples=300, seed=3)
    ref = stats.bootstrap((x, y), theirs, paired=True, vectorized=False, n_resamples=300, method="percentile",
                          rng=np.random.default_rng(3)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-10)
    assert lo < theirs(x, y) < hi


@pytest.mark.parametrize("kind, ref", [("spearman", stats.spearmanr), ("kendall", stats.kendalltau)])
def test_count_statistics_equal_scipy_on_each_resample(xy, kind, ref):
    x, y = xy
    idx = np.random.default_rng(5).integers(0, len(x), (20, len(x)))
    got = S.COUNT_STATISTICS[kind](S.resample_counts(idx, len(x)), x, y)
    want = [ref(x[i], y[i]).statistic for i in idx]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_partial_corr_equals_precision_matrix_formula():
    """Closed form: partial r_xy.z = -P_xy / sqrt(P_xx P_yy), P the inverse correlation matrix."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(200, 2))
    x = z @ [1.0, -0.5] + rng.normal(size=200)
    y = z @ [0.3, 0.8] + 0.4 * x + rng.normal(size=200)
    P = np.linalg.inv(np.corrcoef(np.column_stack([x, y, z]).T))
    expected = -P[0, 1] / np.sqrt(P[0, 0] * P[1, 1])
    r, p, df = S.partial_corr(x, y, z)
    assert r == pytest.approx(expected, abs=1e-10)
    assert df == 200 - 2 - 2
    # closed form for p: the t-test of x's coefficient in OLS y ~ 1 + x + z has the same t and df
    X = np.column_stack([np.ones(200), x, z])
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    cov = rss[0] / (200 - X.shape[1]) * np.linalg.inv(X.T @ X)
    t = beta[1] / np.sqrt(cov[1, 1])
    assert p == pytest.approx(2 * stats.t.sf(abs(t), 200 - X.shape[1]), rel=1e-8)
    r0, p0, _ = S.partial_corr(x, y, None)
    assert (r0, p0) == pytest.approx(tuple(stats.pearsonr(x, y)), abs=1e-10)


def test_block_permutation_matches_exact_scipy_permutation_test():
    """One block = an ordinary permutation test; scipy enumerates all 7! pairings exactly."""
    x = np.array([0.1, 0.5, 0.3, 0.9, 0.7, 0.2, 0.8])
    y = np.array([0.2, 0.4, 0.1, 0.8, 0.9, 0.3, 0.5])
    exact = stats.permutation_test((x, y), lambda a, b: stats.spearmanr(a, b).statistic,
                                   permutation_type="pairings", n_resamples=5040).pvalue  # 7! = exact
    ours = S.block_permutation_pvalue(x, y, np.zeros(7), n_perm=20000, seed=0)
    assert ours == pytest.approx(exact, abs=0.01)


def test_block_permutation_keeps_between_block_structure():
    """x and y share only a per-block offset: pooled rho is large, but within blocks there is no
    association, so the within-block permutation p-value is not small."""
    rng = np.random.default_rng(4)
    blocks = np.repeat(np.arange(5), 8)
    offset = blocks * 10.0
    x, y = offset + rng.normal(size=40), offset + rng.normal(size=40)
    assert stats.spearmanr(x, y).statistic > 0.8
    assert S.block_permutation_pvalue(x, y, blocks, n_perm=2000, seed=0) > 0.05
    y2 = offset + x + 0.1 * rng.normal(size=40)  # a real within-block relation
    assert S.block_permutation_pvalue(x, y2, blocks, n_perm=2000, seed=0) < 0.01


def test_bh_equals_scipy_and_keeps_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5])
    q = S.bh(p)
    assert np.isnan(q[2])
    np.testing.assert_allclose(q[[0, 1, 3, 4]], stats.false_discovery_control(p[[0, 1, 3, 4]], method="bh"))
    # closed form for sorted p: q_(i) = min_{j>=i} p_(j) m / j
    ps = np.array([0.01, 0.03, 0.04, 0.5])
    m = len(ps)
    expected = np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]
    np.testing.assert_allclose(S.bh(ps), expected)
