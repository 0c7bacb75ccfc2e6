"""Relations at step and model level, baselines, verdicts, and the statistics' independent truths
(scipy's spearmanr/kendalltau, exact enumeration of permutations on tiny n, planted answers)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from harness.records import normalise
from harness.report import stats as S
from harness.report.levels import model_relation, step_relation
from harness.report.tables import relation
from harness.store import to_frame


def _rec(**kw):
    base = dict(family="fam", status="ok", scope="checkpoint", seed=0, metric_version="1", run_id="r",
                metric_config_hash="m", model_config_hash="o")
    return normalise({**base, **kw})


# ---- statistics against independent truths ---------------------------------------------------


def _brute_p(x, y, stat):
    """Two-sided as scipy defines it: twice the smaller one-sided tail, over all n! pairings."""
    obs = stat(x, y)
    null = np.array([stat(np.array(p), y) for p in itertools.permutations(x)])
    return min(1.0, 2 * min((null >= obs - 1e-12).mean(), (null <= obs + 1e-12).mean()))


def test_exact_permutation_p_equals_enumeration():
    rng = np.random.default_rng(3)
    for n in (4, 5, 6):
        x, y = rng.normal(size=n), rng.normal(size=n)
        y = y + x
        want = _brute_p(x, y, lambda a, b: stats.spearmanr(a, b).statistic)
        assert S.permutation_pvalue(x, y) == pytest.approx(want, abs=1e-12)
        want = _brute_p(x, y, lambda a, b: stats.pearsonr(a, b).statistic)
        assert S.permutation_pvalue(x, y, statistic="pearson") == pytest.approx(want, abs=1e-12)
    # a perfect order of 6 runs: 2 of 720 pairings are as extreme (both directions)
    assert S.permutation_pvalue(np.arange(6.0), np.arange(6.0) ** 2) == pytest.approx(2 / 720)


def test_loo_gain_and_sign_stability_against_direct_computation():
    rng = np.random.default_rng(0)
    n = 8
    z = rng.normal(size=n)
    x = rng.normal(size=n)
    y = 2 * z + x + 0.1 * rng.normal(size=n)
    gain, lo, hi = S.loo_gain(x, y, z[:, None], n_boot=200)

    def loo_r2(cols):
        pred = np.empty(n)
        for i in range(n):
            m = np.arange(n) != i
            X = np.column_stack([np.ones(n)] + cols)
            coef = np.linalg.lstsq(X[m], y[m], rcond=None)[0]
            pred[i] = X[i] @ coef
        return 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()

    assert gain == pytest.approx(loo_r2([z, x]) - loo_r2([z]))
    assert lo < gain < hi and gain > 0.1
    agree, total = S.loo_sign_stability(x, y, z[:, None])
    assert total == n and agree == n


# ---- model level --------------------------------------------------------------------------------


def runs_frame(final_scores, n_params, obs, steps=(0, 100, 1000), noise_obs=None):
    rows = []
    early = np.random.default_rng(7).uniform(0, 0.1, size=(len(final_scores), len(steps)))
    for i, (score, npar, o) in enumerate(zip(final_scores, n_params, obs)):
        mid = f"fam/run{i}"
        for j, st in enumerate(steps):
            frac = 1.0 if j == len(steps) - 1 else early[i, j]  # early scores: unrelated to the final one
            common = dict(model_id=mid, size=f"s{i}", n_params=int(npar), step=st, checkpoint=f"step{st}",
                          tokens_seen=st * 10)
            rows.append(_rec(**common, metric="ev", measure="acc", task="t", value=score * frac,
                             higher_is_better=True, performance="score"))
            if noise_obs is not None:
                rows.append(_rec(**common, metric="obs", measure="noise", value=noise_obs[i] + st))
        rows.append(_rec(model_id=mid, size=f"s{i}", n_params=int(npar), step=steps[-1], scope="trajectory",
                         metric="fit", measure="t_d", value=o))
    return to_frame(rows)


def test_planted_trajectory_observable_shows_up_at_model_level():
    """A trajectory observable that orders 6 runs exactly like their final score, with n_params
    unrelated to the score: right sign, exact p = 2/720, sign stable, verdict names it."""
    score = np.array([0.3, 0.5, 0.2, 0.7, 0.4, 0.6])
    n_params = [4e6, 1e6, 8e6, 2e6, 3e6, 6e6]
    obs = -np.log(score) * 3.0  # monotone decreasing in score: rho = -1
    rng = np.random.default_rng(1)
    t = model_relation(runs_frame(score, n_params, obs, noise_obs=rng.normal(size=6)), n_boot=200)
    row = t.data[t.data.observable == "fit.t_d"].iloc[0]
    assert row["n"] == 6 and row["spearman"] == pytest.approx(-1.0)
    assert row["spearman"] == pytest.approx(stats.spearmanr(obs, score).statistic)
    assert row["kendall"] == pytest.approx(stats.kendalltau(obs, score).statistic)
    assert row["spearman_p"] == pytest.approx(2 / 720)
    assert row["sign_agree"] == row["sign_n"] == 6 and row["partial_r"] < -0.8
    base = t.data[t.data.observable == "log(n_params)"].iloc[0]
    assert base["spearman"] == pytest.approx(stats.spearmanr(np.log(n_params), score).statistic)
    assert "fit.t_d relates to t/acc beyond log(n_params): partial r = -" in t.footer[0]


def test_model_level_refuses_a_verdict_from_too_few_runs():
    t = model_relation(runs_frame([0.1, 0.2, 0.3], [1e6, 2e6, 3e6], [3, 2, 1]), n_boot=50)
    assert "no verdict at model level: needs >= 5 runs, has 3 (2 missing)" in t.footer[0]


def test_observable_that_only_tracks_size_does_not_beat_the_baseline():
    score = np.log([1e6, 2e6, 4e6, 8e6, 16e6, 32e6]) + np.array([0.3, -0.2, 0.1, -0.3, 0.2, -0.1])
    n_params = [1e6, 2e6, 4e6, 8e6, 16e6, 32e6]
    obs = np.log(n_params) * 2 + 1  # size in disguise: rho = 1 with the score, nothing beyond size
    t = model_relation(runs_frame(score, n_params, obs), n_boot=50)
    row = t.data[t.data.observable == "fit.t_d"].iloc[0]
    assert abs(row["spearman"]) > 0.8 and np.isnan(row["partial_r"])  # collinear with the baseline
    assert "no observable beats log(n_params) for t/acc" in t.footer[0]


# ---- step level ---------------------------------------------------------------------------------


def suite_frame(planted: bool, n_steps: int = 12, sizes=("70m", "160m", "410m"), seed: int = 0):
    rng = np.random.default_rng(seed)
    steps = np.unique(np.geomspace(10, 10000, n_steps).astype(int))
    wiggle = rng.normal(size=len(steps))  # performance's step-to-step deviation from its trend
    rows = []
    for k, size in enumerate(sizes):
        for j, st in enumerate(steps):
            perf = 0.1 * np.log1p(st) + 0.05 * k + 0.05 * wiggle[j] + 0.005 * rng.normal()
            rows.append(_rec(model_id=f"fam/{size}", size=size, step=int(st), checkpoint=f"step{st}", metric="ev",
                             measure="acc", task="t", value=perf, higher_is_better=True, performance="score"))
    for j, st in enumerate(steps):
        v = (wiggle[j] + 0.1 * rng.normal()) if planted else np.log1p(st) ** 2  # monotone in step alone
        rows.append(_rec(model_id="fam:suite", step=int(st), scope="suite", metric="tr", measure="v_rel", value=v))
    return to_frame(rows)


def test_planted_step_series_shows_up_at_step_level():
    t = step_relation(suite_frame(True), n_boot=100)
    d = t.data
    row = d[(d.observable == "tr.v_rel") & (d.size_level == "mean over sizes")].iloc[0]
    assert row["partial_r"] > 0.8 and row["q_bh"] < 0.01 and row["gain"] > 0
    assert "tr.v_rel relates to t/acc beyond log(1+step)" in t.footer[0]
    assert set(d.size_level) == {"mean over sizes", "size 70m", "size 160m", "size 410m"}


def test_monotone_in_step_series_does_not_beat_log_step():
    partials = []
    for seed in range(4):
        t = step_relation(suite_frame(False, seed=seed), n_boot=50)
        d = t.data
        row = d[(d.observable == "tr.v_rel") & (d.size_level == "mean over sizes")].iloc[0]
        assert row["spearman"] > 0.9  # raw: both move with time
        partials.append(row["partial_r"])
        assert "no observable beats log(1+step)" in t.footer[0]
    assert abs(np.mean(partials)) < 0.5


def test_checkpoint_level_monotone_observable_verdict_says_so():
    from test_report_tables import make_frame

    t = relation(make_frame(seed=2), n_boot=50, n_perm=50)
    verdicts = [x for x in t.footer if x.startswith("verdict:")]
    assert len(verdicts) == 1 and "no observable beats log(tokens_seen) + size" in verdicts[0]
    row = t.data[(t.data.observable == "obs.tracks") & (t.data.performance == "pydoc_mc/acc")].iloc[0]
    assert abs(row["partial_r"]) < 0.6 and np.isfinite(row["gain"])
