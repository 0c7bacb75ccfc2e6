"""Statistics for the relation table: rank correlations with bootstrap CIs, partial correlation,
block-permutation tests and Benjamini-Hochberg, all on top of `scipy.stats`.

    >>> rho = spearman(x, y)                                   # == scipy.stats.spearmanr(x, y)[0]
    >>> lo, hi = bootstrap_ci(x, y, "kendall", n_resamples=1000, seed=0)
    >>> r, p = partial_corr(x, y, covariates)                  # residual correlation
    >>> p = block_permutation_pvalue(x, y, blocks, n_perm=1000, seed=0)
    >>> q = scipy.stats.false_discovery_control(ps, method="bh")

The bootstrap and the permutation test are vectorised over resamples (one numpy/BLAS pass
instead of one scipy call per resample): the report must stay fast with many observables (a
bench checks 10^5 records in < 10 s). They compute the same estimators scipy does (tests
compare them on fixed data and against `scipy.stats.bootstrap`/`permutation_test`): Spearman
is Pearson on average ranks, Kendall is tau-b.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(axis=-1)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def spearman_batch(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along ``axis`` (average ranks for ties), vectorised over the other axes."""
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    return _pearson_rows(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def kendall_batch(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall tau-b along ``axis``, vectorised: S / sqrt(untied_x * untied_y) over all pairs.

    O(n^2) memory per resample, so resamples are processed in chunks.
    """
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    shape = x.shape[:-1]
    n = x.shape[-1]
    x2, y2 = x.reshape(-1, n), y.reshape(-1, n)
    out = np.empty(x2.shape[0])
    chunk = max(1, int(2e7 // max(n * n, 1)))
    iu = np.triu_indices(n, k=1)
    for s in range(0, x2.shape[0], chunk):
        xs, ys = x2[s : s + chunk], y2[s : s + chunk]
        sx = np.sign(xs[:, :, None] - xs[:, None, :])[:, iu[0], iu[1]]
        sy = np.sign(ys[:, :, None] - ys[:, None, :])[:, iu[0], iu[1]]
        num = (sx * sy).sum(axis=1)
        den = np.sqrt(np.abs(sx).sum(axis=1) * np.abs(sy).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + chunk] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out.reshape(shape)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy), NaN for fewer than three points or constant input."""
    return float(stats.spearmanr(x, y).statistic)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (scipy), NaN for fewer than three points or constant input."""
    return float(stats.kendalltau(x, y).statistic)  # tau-b, as kendall_batch


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) multiplicities of each observation in each bootstrap resample of indices ``idx``."""
    b = idx.shape[0]
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(float)


def spearman_counts(counts: np.ndarray, x, y) -> np.ndarray:
    """Spearman rho of every resample given as multiplicities (B, n), in O(B n^2) BLAS work.

    The average rank of observation i inside a resample is ``#{less} + (#{equal} + 1) / 2``
    counted with multiplicities; rho is then the count-weighted Pearson correlation of ranks.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = counts.shape[1]

    def ranks(v):
        less = (v[None, :] < v[:, None]).astype(float)  # [i, j] = v_j < v_i
        equal = (v[None, :] == v[:, None]).astype(float)
        return counts @ less.T + (counts @ equal.T + 1.0) / 2.0

    rx, ry = ranks(x), ranks(y)
    mx = (counts * rx).sum(1, keepdims=True) / n
    my = (counts * ry).sum(1, keepdims=True) / n
    dx, dy = rx - mx, ry - my
    num = (counts * dx * dy).sum(1)
    den = np.sqrt((counts * dx * dx).sum(1) * (counts * dy * dy).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), np.nan)


def kendall_counts(counts: np.ndarray, x, y) -> np.ndarray:
    """Kendall tau-b of every resample given as multiplicities: ``c' P c`` with P the pairwise
    concordance matrix of the original data (copies of one observation are tied in both)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])

    def quad(m):
        return ((counts @ m) * counts).sum(1)

    num = quad(sx * sy)
    den = np.sqrt(quad(np.abs(sx)) * quad(np.abs(sy)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


COUNT_STATISTICS = {"spearman": spearman_counts, "kendall": kendall_counts}


def bootstrap_ci(x, y, statistic: str = "spearman", *, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Paired percentile bootstrap CI of Spearman's rho or Kendall's tau-b.

    Exactly ``scipy.stats.bootstrap((x, y), stat, paired=True, method="percentile",
    rng=np.random.default_rng(seed))`` (same resamples, same quantiles; a test checks it), but
    each resample is scored from its multiplicities in one matrix product instead of one scipy
    call per resample: a relation table has hundreds of pairs and must render in seconds.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3 or n_resamples <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_resamples, n))  # what scipy's paired bootstrap draws
    theta = COUNT_STATISTICS[statistic](resample_counts(idx, n), x, y)
    alpha = (1 - confidence) / 2
    finite = theta[np.isfinite(theta)]
    # a resample that repeats one point is constant and has no correlation; scipy would return
    # NaN for the whole interval, we drop such resamples unless they are more than 5%
    if len(finite) < 0.95 * n_resamples:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)


def residualise(v: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Residuals of least squares ``v ~ design`` (design includes the intercept column)."""
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


def partial_corr(x, y, covariates: np.ndarray | None) -> tuple[float, float, int]:
    """Pearson correlation of x and y after regressing both on ``covariates`` (+ intercept).

    Returns (r, two-sided p, df) with df = n - 2 - k (k covariate columns), the usual test for
    a partial correlation. With no covariates this is `scipy.stats.pearsonr`.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    cov = np.ones((n, 1)) if covariates is None else np.column_stack([np.ones(n), covariates])
    # drop covariate columns that are constant or collinear (rank-deficient design)
    rank = np.linalg.matrix_rank(cov)
    k = rank - 1
    df = n - 2 - k
    if df < 1:
        return float("nan"), float("nan"), df
    rx, ry = residualise(x, cov), residualise(y, cov)
    if np.allclose(rx, 0) or np.allclose(ry, 0):
        return float("nan"), float("nan"), df
    r = float(stats.pearsonr(rx, ry).statistic)
    r = max(-1.0, min(1.0, r))
    if abs(r) == 1.0:
        return r, 0.0, df
    t = r * np.sqrt(df / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), df)), df


def block_permutation_pvalue(x, y, blocks, *, n_perm: int = 1000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho, shuffling x only WITHIN blocks.

    Blocks are training runs (model_id): the null is "no association between x and y within a
    run", and the between-run structure (sizes, offsets) is kept in every permutation. p is
    (1 + #{|T_perm| >= |T_obs|}) / (1 + n_perm), never 0. Ranks are computed once: permuting
    x permutes its ranks, so each permutation costs one row of a Pearson product.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    blocks = np.asarray(blocks)
    if len(x) < 3 or n_perm <= 0:
        return float("nan")
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    observed = float(_pearson_rows(rx[None, :], ry[None, :])[0])
    if not np.isfinite(observed):
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = np.tile(np.arange(len(x)), (n_perm, 1))
    for b in np.unique(blocks):
        members = np.flatnonzero(blocks == b)
        if len(members) > 1:
            idx[:, members] = rng.permuted(np.tile(members, (n_perm, 1)), axis=1)
    perm_stats = _pearson_rows(rx[idx], np.broadcast_to(ry, idx.shape))
    hits = np.sum(np.abs(perm_stats) >= abs(observed) - 1e-12)
    return float((1 + hits) / (1 + n_perm))


def bh(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaNs stay NaN."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


# ---- few points: exact permutation tests, leave-one-out gain and sign stability ----------------

#: enumerate every permutation up to this many (8! = 40320); beyond, `n_resamples` random ones.
#: NOTE: 9! = 362880 took 0.8 s per p-value (0.05 s for 8!), and a step-level table of 9 aligned
#: steps computes two per row: a report of a few hundred rows sat for minutes (issue 16)
EXACT_MAX = 40_320


def _n_resamples(n: int, n_perm: int) -> float:
    import math

    return float("inf") if math.factorial(n) <= EXACT_MAX else n_perm


def permutation_pvalue(x, y, *, statistic: str = "spearman", n_perm: int = 9999, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho (or Pearson's r) by
    `scipy.stats.permutation_test` (``pairings``; two-sided = twice the smaller tail): exact
    enumeration for n! <= 40320 (n <= 8), else ``n_perm`` random pairings. The p-value of few
    runs must not be an asymptotic one."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if statistic == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)

    def r(a, axis=-1):  # only x is permuted (scipy's idiom for correlation: n! pairings, not n!^2)
        a = np.moveaxis(np.asarray(a), axis, -1)
        return _pearson_rows(a, np.broadcast_to(y, a.shape))

    res = stats.permutation_test((x,), r, permutation_type="pairings", vectorized=True,
                                 n_resamples=_n_resamples(len(x), n_perm), alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return float(res.pvalue)


def design(covariates: np.ndarray | None, n: int) -> np.ndarray:
    """Intercept plus the covariate columns."""
    return np.ones((n, 1)) if covariates is None or np.size(covariates) == 0 else np.column_stack(
        [np.ones(n), covariates])


def partial_permutation(x, y, covariates, *, n_perm: int = 9999, seed: int = 0) -> tuple[float, float, int]:
    """Partial correlation of x and y given covariates, with a permutation p-value of the
    residuals (Pearson on the residuals of both regressions, pairings permuted; exact for small n).
    Returns (r, p, df) with df = n - 2 - k."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    cov = design(covariates, n)
    k = np.linalg.matrix_rank(cov) - 1
    df = n - 2 - k
    if df < 1:
        return float("nan"), float("nan"), df
    rx, ry = residualise(x, cov), residualise(y, cov)
    if np.allclose(rx, 0, atol=1e-12 * (1 + np.abs(x).max())) or np.allclose(ry, 0, atol=1e-12 * (1 + np.abs(y).max())):
        return float("nan"), float("nan"), df
    r = float(np.clip(stats.pearsonr(rx, ry).statistic, -1, 1))
    return r, permutation_pvalue(rx, ry, statistic="pearson", n_perm=n_perm, seed=seed), df


def fisher_ci(r: float, n: int, k: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval of a (partial) correlation from n points and k covariates."""
    dof = n - 3 - k
    if not np.isfinite(r) or dof < 1 or abs(r) >= 1:
        return float("nan"), float("nan")
    z = np.arctanh(r)
    h = stats.norm.ppf(0.5 + confidence / 2) / np.sqrt(dof)
    return float(np.tanh(z - h)), float(np.tanh(z + h))


def loo_gain(x, y, covariates, groups=None, *, n_boot: int = 1000, seed: int = 0,
             confidence: float = 0.95) -> tuple[float, float, float]:
    """Out-of-sample gain of adding ``x`` to the baseline: leave-one-group-out R² of
    ``y ~ baseline + x`` minus that of ``y ~ baseline`` (groups = runs, or points when None).

    Both R² share one denominator (the total sum of squares), so the gain is the sum over held-out
    groups of (SSE_baseline - SSE_full) / SST; its interval is a percentile bootstrap over the
    groups (`scipy.stats.bootstrap`). Returns (gain, lo, hi); NaN when fewer than 3 groups.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(y)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    uniq = list(dict.fromkeys(groups.tolist()))
    if len(uniq) < 3:
        return float("nan"), float("nan"), float("nan")
    base = design(covariates, n)
    full = np.column_stack([base, x])
    sst = float(((y - y.mean()) ** 2).sum())
    if sst <= 0:
        return float("nan"), float("nan"), float("nan")
    contrib = []
    for g in uniq:
        test = groups == g
        train = ~test
        d = 0.0
        for X, sign in ((base, 1.0), (full, -1.0)):
            coef, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
            d += sign * float(((y[test] - X[test] @ coef) ** 2).sum())
        contrib.append(d / sst)
    contrib = np.asarray(contrib)
    gain = float(contrib.sum())
    if n_boot <= 0 or np.ptp(contrib) == 0:
        return gain, float("nan"), float("nan")
    res = stats.bootstrap((contrib,), lambda c, axis=-1: c.sum(axis=axis), n_resamples=n_boot,
                          method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed),
                          vectorized=True)
    return gain, float(res.confidence_interval.low), float(res.confidence_interval.high)


def loo_sign_stability(x, y, covariates=None) -> tuple[int, int]:
    """How many leave-one-point-out subsets keep the sign of the full partial correlation
    (Spearman without covariates): (agreeing, subsets). A sign that flips when one run is left
    out is not a finding, whatever its p-value."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    cov = None if covariates is None or np.size(covariates) == 0 else np.asarray(covariates, float).reshape(n, -1)

    def stat(idx):
        if cov is None:
            return spearman(x[idx], y[idx]) if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0 else float("nan")
        return partial_corr(x[idx], y[idx], cov[idx])[0]

    full = stat(np.arange(n))
    if not np.isfinite(full) or full == 0 or n < 3:
        return 0, 0
    agree = sum(1 for i in range(n) if np.sign(stat(np.delete(np.arange(n), i))) == np.sign(full))
    return agree, n
