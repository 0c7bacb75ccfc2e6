"""Forecasting: methods against a generator with a known answer, conformal intervals against
mapie and brute force, skips with reasons, series selection, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from harness.forecast.backtest import backtest
from harness.forecast.conformal import jackknife_plus, rank_upper, split_conformal
from harness.forecast.engine import forecast
from harness.forecast.methods import FAMILIES, Case, Curve, Last, Skip, Suite, fit_family, robust_lstsq
from harness.forecast.series import ForecastError, observable_series, performance_series
from harness.forecast.synthetic import synthetic_records, synthetic_series

SIGMA = 0.01


# ---- point forecasts recover the generator ---------------------------------------------------


def test_point_forecasts_recover_generator_within_noise():
    """suite and curve are correctly specified for the generator: without noise they recover
    the final value exactly, with noise of known sigma their error is of the order of sigma
    (an extrapolation over a decade amplifies it), while `last` misses the gain it ignores."""
    def mae(sigma):
        err = {"suite": [], "curve": [], "last": []}
        for seed in range(3):
            perf, truth = synthetic_series(n_runs=8, n_series=3, sigma=sigma, seed=seed)
            if sigma == 0:
                perf["stderr"] = np.nan
            fc = forecast(perf, methods=[Suite(robust=False), Curve(), Last()], cutoff=0.1)
            assert (fc["status"] == "ok").all(), fc[fc["status"] != "ok"]["reason"].tolist()
            for m, g in fc.groupby("method"):
                t = truth.loc[list(zip(g["run"], g["series"]))].to_numpy()
                err[m].extend(np.abs(g["prediction"].to_numpy() - t))
        return {m: float(np.mean(v)) for m, v in err.items()}

    exact = mae(0.0)
    assert exact["suite"] < 1e-6 and exact["curve"] < 1e-4, exact
    noisy = {m: v / SIGMA for m, v in mae(SIGMA).items()}
    # measured: suite ~1.0 sigma, curve ~1.8 sigma, last ~4 sigma
    assert noisy["suite"] < 2 and noisy["curve"] < 3, noisy
    assert noisy["last"] > 3, noisy
    assert exact["last"] > 3 * SIGMA


# ---- calibration -----------------------------------------------------------------------------


@pytest.mark.parametrize("reps", [pytest.param(100, id="100"), pytest.param(400, id="400", marks=pytest.mark.slow)])
def test_interval_coverage_over_replicates(reps):
    """Over 100 (slow: 400) replicates of the generator, 90% intervals of held-out runs cover 0.88-0.92 of
    their realised values. Leave-one-run-out split conformal (per-run method, pool per series,
    9 calibration runs) has expected coverage ceil(0.9 * 10) / 10 = 0.90 exactly when runs are
    exchangeable (sizes drawn iid per replicate). Each of the 20 independent series of a
    replicate scores a different held-out run (run i mod 10), 2000 events in all; the tolerance
    is 3 standard errors of a binomial proportion at 0.9 (sqrt(0.09 / 2000) = 0.0067), and the
    replicate-to-replicate spread is reported. Seeded, so deterministic."""
    per_rep = []
    for rep in range(reps):
        perf, _ = synthetic_series(n_runs=10, n_series=20, sigma=SIGMA, seed=10_000 + rep, steps=np.array(
            [1000, 2000, 4000, 7000, 10000, 100000.0]))
        fc = forecast(perf, methods=["last"], cutoff=0.1, pool="series")
        assert (fc["n_calibration"] == 9).all()
        pick = fc["run"].str[-2:].astype(int) == fc["series"].str.extract(r"task(\d+)")[0].astype(int) % 10
        f = fc[pick]
        assert len(f) == 20
        per_rep.append(float(((f["realised"] >= f["lower"]) & (f["realised"] <= f["upper"])).mean()))
    coverage = float(np.mean(per_rep))
    se = float(np.std(per_rep, ddof=1) / np.sqrt(len(per_rep)))
    print(f"coverage {coverage:.4f} +- {se:.4f} (replicate se)")
    assert 0.88 <= coverage <= 0.92, (coverage, se)


def test_suite_jackknife_plus_coverage():
    """jackknife+ for the cross-run method guarantees >= 1 - 2 alpha; on the generator it is
    close to nominal (measured 0.90 with 20 runs); 15 replicates x 20 runs, tolerance 0.85-0.95."""
    hits = []
    for rep in range(15):
        perf, _ = synthetic_series(n_runs=20, n_series=1, sigma=SIGMA, seed=20_000 + rep,
                                   steps=np.array([1000, 2000, 4000, 7000, 10000, 100000.0]))
        fc = forecast(perf, methods=[Suite(robust=False)], cutoff=0.1, pool="series")
        hits.extend(((fc["realised"] >= fc["lower"]) & (fc["realised"] <= fc["upper"])).tolist())
    assert 0.85 <= float(np.mean(hits)) <= 0.95


def _brute_jackknife_plus(x, y, xt, alpha):
    """Jackknife+ from its definition with explicit leave-one-out OLS refits and order statistics."""
    n = len(y)
    lo_vals, hi_vals = [], []
    for j in range(n):
        keep = np.arange(n) != j
        A = np.column_stack([np.ones(keep.sum()), x[keep]])
        b = np.linalg.lstsq(A, y[keep], rcond=None)[0]
        r = abs(y[j] - (b[0] + b[1] * x[j]))
        mu = b[0] + b[1] * xt
        lo_vals.append(mu - r)
        hi_vals.append(mu + r)
    # upper: the smallest value u with #{hi <= u} >= (1 - alpha)(n + 1); lower mirrored
    hi = min(u for u in hi_vals if sum(v <= u for v in hi_vals) >= (1 - alpha) * (n + 1) - 1e-9)
    lo = max(u for u in lo_vals if sum(v >= u for v in lo_vals) >= (1 - alpha) * (n + 1) - 1e-9)
    return lo, hi, lo_vals, hi_vals


def test_jackknife_plus_matches_brute_force_and_mapie():
    rng = np.random.default_rng(3)
    x = rng.normal(size=9)
    y = 0.5 + 2 * x + rng.normal(0, 0.3, 9)
    xt, alpha = 0.7, 0.2
    lo_b, hi_b, lo_vals, hi_vals = _brute_jackknife_plus(x, y, xt, alpha)
    mu = (np.array(lo_vals) + np.array(hi_vals)) / 2
    r = (np.array(hi_vals) - np.array(lo_vals)) / 2
    lo, hi = jackknife_plus(mu, r, alpha)
    assert lo == pytest.approx(lo_b) and hi == pytest.approx(hi_b)
    # mapie is in the [test] extra (CI has it); a venv made before it was added skips this half
    CrossConformalRegressor = pytest.importorskip(
        "mapie.regression", reason="pip install -c constraints.txt mapie").CrossConformalRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import LeaveOneOut

    m = CrossConformalRegressor(LinearRegression(), confidence_level=1 - alpha, method="plus",
                                      cv=LeaveOneOut())
    m.fit_conformalize(x[:, None], y)
    _, iv = m.predict_interval(np.array([[xt]]))
    assert iv[0, 0, 0] == pytest.approx(lo) and iv[0, 1, 0] == pytest.approx(hi)


def test_split_conformal_quantile_and_unbounded():
    scores = np.arange(1, 20, dtype=float)  # 19 scores: 90% -> the 18th smallest
    assert rank_upper(0.1, 19) == 18
    assert split_conformal(0.0, scores, 0.1) == (-18.0, 18.0)
    lo, hi = split_conformal(0.0, scores[:5], 0.1)  # 5 scores cannot make a 90% interval
    assert math.isinf(lo) and math.isinf(hi)


def test_engine_intervals_equal_brute_force_leave_one_run_out():
    """The engine's suite interval for each held-out run equals jackknife+ computed by hand:
    OLS of the gain on [1, log n, y_c] refitted without the target and each calibration run."""
    perf, _ = synthetic_series(n_runs=7, n_series=1, sigma=SIGMA, seed=5)
    fc = forecast(perf, methods=[Suite(robust=False)], cutoff=0.1, level=0.75, pool="series", scale="none")
    runs = sorted(perf["run"].unique())
    target = perf["step"].max()
    c_step = 0.1 * target
    yc = {r: perf[(perf.run == r) & (perf.step <= c_step)].sort_values("step")["value"].iloc[-1] for r in runs}
    yT = {r: perf[(perf.run == r) & (perf.step == target)]["value"].iloc[0] for r in runs}
    ln = {r: math.log(perf[perf.run == r]["n_params"].iloc[0]) for r in runs}

    def fit_pred(train, at):
        A = np.array([[1, ln[j], yc[j]] for j in train])
        b = np.linalg.lstsq(A, np.array([yT[j] - yc[j] for j in train]), rcond=None)[0]
        return yc[at] + np.array([1, ln[at], yc[at]]) @ b

    for r in runs:
        others = [j for j in runs if j != r]
        mu = [fit_pred([k for k in others if k != j], r) for j in others]
        res = [abs(yT[j] - fit_pred([k for k in others if k != j], j)) for j in others]
        lo, hi = jackknife_plus(np.array(mu), np.array(res), 0.25)
        row = fc[fc.run == r].iloc[0]
        assert row["prediction"] == pytest.approx(fit_pred(others, r))
        assert (row["lower"], row["upper"]) == pytest.approx((lo, hi))


# ---- methods that cannot fit -----------------------------------------------------------------


def test_unfittable_run_is_skipped_with_reason_others_run():
    perf, _ = synthetic_series(n_runs=6, n_series=1, sigma=SIGMA, seed=2)
    flat = perf["run"] == "run00"
    perf.loc[flat, "value"] = 0.25  # a flat curve
    few = (perf["run"] == "run01") & perf["step"].between(1, 8000)
    perf = perf[~few]  # run01: too few early points
    fc = forecast(perf, methods=["last", "curve", "ensemble", "suite"], cutoff=0.1)
    curve = fc[fc.method == "curve"].set_index("run")
    assert curve.loc["run00", "status"] == "skipped" and "flat curve" in curve.loc["run00", "reason"]
    assert curve.loc["run01", "status"] == "skipped" and "too few points" in curve.loc["run01", "reason"]
    assert (curve.drop(index=["run00", "run01"])["status"] == "ok").all()
    assert (fc[fc.method.isin(["last", "suite"])]["status"] == "ok").all()
    ens = fc[fc.method == "ensemble"].set_index("run")
    assert ens.loc["run00", "status"] == "skipped"


def test_too_few_runs_for_suite_is_skipped():
    perf, _ = synthetic_series(n_runs=3, n_series=1, sigma=SIGMA, seed=1)
    fc = forecast(perf, methods=["suite"], cutoff=0.1)
    assert (fc["status"] == "skipped").all()
    assert fc["reason"].str.contains("too few completed runs").all()


# ---- fitters against scipy --------------------------------------------------------------------


def test_robust_lstsq_equals_scipy_soft_l1():
    from scipy.optimize import least_squares

    rng = np.random.default_rng(0)
    A = np.column_stack([np.ones(9), rng.normal(size=(9, 2))])
    y = A @ [0.1, 0.2, -0.3] + rng.normal(0, 0.01, 9)
    y[2] += 0.3
    b = robust_lstsq(A, y, 0.01)
    ref = least_squares(lambda c: A @ c - y, np.zeros(3), loss="soft_l1", f_scale=0.01, xtol=1e-15, ftol=1e-15,
                        gtol=1e-15).x
    assert np.allclose(b, ref, atol=1e-7)


@pytest.mark.parametrize("name,params", [("pow3", (0.8, -0.3, 0.6)), ("exp3", (0.7, -0.5, 2.0)),
                                         ("janoschek", (0.9, -0.6, 0.8, 0.7))])
def test_fit_family_recovers_planted_parameters(name, params):
    fam = FAMILIES[name]
    x = np.geomspace(0.01, 1, 12)
    y = fam(x, *params)
    p = fit_family(fam, x, y, None)
    assert np.allclose(fam(np.array([3.0, 10.0]), *p), fam(np.array([3.0, 10.0]), *params), atol=1e-4)


def test_ensemble_weights_and_guard():
    perf, truth = synthetic_series(n_runs=4, n_series=1, sigma=SIGMA, seed=7)
    fc = forecast(perf, methods=["ensemble"], cutoff=0.25)
    assert (fc["status"] == "ok").all()
    inputs = json.loads(fc["inputs"].iloc[0])
    assert abs(sum(inputs["weights"].values()) - 1) < 1e-3
    err = np.abs(fc["prediction"].to_numpy() - truth.loc[list(zip(fc.run, fc.series))].to_numpy())
    assert err.max() < 0.1


def test_curve_skip_is_a_skip_not_an_error():
    case = Case(run="r", series="s", cutoff=1000.0, target=10000.0, steps=np.array([500.0, 1000.0]),
                values=np.array([0.3, 0.4]), stderr=np.array([0.01, 0.01]))
    with pytest.raises(Skip, match="too few points"):
        Curve().predict(case, [])


# ---- series selection ------------------------------------------------------------------------


def test_series_from_declaration_and_selectors():
    rec = synthetic_records(n_runs=3, n_series=2)
    perf = performance_series(rec)
    assert sorted(perf["series"].unique()) == ["task0/acc", "task1/acc"]
    obs = observable_series(rec, targets=perf["series"].unique())
    assert sorted(obs["series"].unique()) == ["probe.signal"]
    assert performance_series(rec.drop(columns="performance"), ["synthetic:acc:task1"])["series"].unique() == [
        "task1/acc"]
    with pytest.raises(ForecastError, match="no performance series"):
        performance_series(rec.drop(columns="performance"))
    with pytest.raises(ForecastError, match="no model-level series match"):
        performance_series(rec, ["nothing:*"])


def test_mixed_configurations_are_refused():
    rec = synthetic_records(n_runs=2, n_series=1, observable=False)
    other = rec.iloc[:3].copy()
    other["value"] += 0.1
    with pytest.raises(ForecastError, match="mixed configurations"):
        performance_series(pd.concat([rec, other]))


def test_backtest_summary_and_verdict():
    perf, _ = synthetic_series(n_runs=8, n_series=2, sigma=SIGMA, seed=4)
    bt = backtest(perf, cutoffs=(0.1, 0.5), methods=["last", Suite(robust=False)])
    overall = bt.summary[bt.summary.series == "all"].set_index(["method", "cutoff"])
    assert set(overall.index) == {("last", 0.1), ("suite", 0.1), ("last", 0.5), ("suite", 0.5)}
    assert overall.loc[("suite", 0.1), "mae"] < overall.loc[("last", 0.1), "mae"]
    assert overall.loc[("suite", 0.1), "spearman"] > 0.8
    assert bt.verdict.startswith("at cutoff 0.1: suite wins")
    # the scores are what they say: MAE recomputed from the forecasts
    f = bt.forecasts[(bt.forecasts.method == "last") & (bt.forecasts.cutoff == 0.1)]
    assert overall.loc[("last", 0.1), "mae"] == pytest.approx(float(np.mean(np.abs(f.prediction - f.realised))))


# ---- the CLI on a results root -----------------------------------------------------------------


def _write_root(tmp_path, rec):
    root = tmp_path / "run"
    root.mkdir()
    rows = rec.assign(record_id=[f"r{i}" for i in range(len(rec))], unit_n=1, scope="checkpoint")
    with open(root / "records-test-1.jsonl", "w") as fh:
        for r in rows.to_dict("records"):
            fh.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}) + "\n")
    return root


def test_cli_forecast_and_backtest(tmp_path, capsys):
    from harness.cli import main

    root = _write_root(tmp_path, synthetic_records(n_runs=6, n_series=2, seed=3))
    sel = ["--series", "synthetic:acc:*", "--features", "probe:signal"]
    assert main(["forecast", str(root), "--method", "last,suite,observables", *sel]) == 0
    fc = pd.read_csv(root / "forecast" / "forecast.csv")
    assert set(fc["method"]) == {"last", "suite", "observables"}
    assert len(fc) == 3 * 6 * 2
    assert main(["forecast", "backtest", str(root), "--method", "last,suite,observables", "--cutoffs",
                 "0.1,0.5", *sel]) == 0
    out = capsys.readouterr().out
    assert "verdict: at cutoff 0.1" in out
    for name in ("backtest.csv", "backtest.md", "backtest_forecasts.csv", "backtest_predicted_vs_realised.png",
                 "backtest_mae_vs_cutoff.png"):
        assert (root / "forecast" / name).stat().st_size > 0
    summary = pd.read_csv(root / "forecast" / "backtest.csv")
    assert set(summary["cutoff"]) == {0.1, 0.5}
    assert main(["forecast", str(root), "--method", "nope", *sel]) == 2


def test_unbounded_intervals_are_not_counted_as_coverage():
    """3 runs leave 2 calibration runs per target: a 90% interval cannot be bounded; the
    backtest says so instead of reporting coverage 1.0."""
    perf, _ = synthetic_series(n_runs=3, n_series=1, sigma=SIGMA, seed=8)
    bt = backtest(perf, cutoffs=(0.1, 0.5), methods=["last"], pool="series")
    row = bt.summary[(bt.summary.series == "all") & (bt.summary.cutoff == 0.1)].iloc[0]
    assert math.isnan(row["coverage"]) and row["n_unbounded"] == 3
    assert "unbounded" in bt.verdict
    assert bt.forecasts["reason"].str.contains("too few for level").all()


def _hidden_rate_suite(n_runs=12, seed=0, informative=True):
    """Runs of one size whose late gain (after the cutoff) depends on a hidden h_r that nothing
    before the cutoff in the scores reveals; an early observable measures h_r (or, as a
    control, is pure noise). Only the observables method can see it."""
    rng = np.random.default_rng(seed)
    steps = np.array([1000, 2000, 4000, 7000, 10000, 30000, 100000.0])
    rows = []
    for i in range(n_runs):
        run = f"run{i:02d}"
        h = rng.uniform(0, 1)
        probe = h + rng.normal(0, 0.02) if informative else rng.normal()
        for s, (chance, ceil) in enumerate([(0.25, 0.75), (0.5, 0.9)]):
            ceil = ceil + rng.normal(0, 0.03)
            y = ceil - (ceil - chance) * (steps / 1000) ** -0.5 + 0.1 * h * np.maximum(0, np.log10(steps / 10000))
            for t, v in zip(steps, y + rng.normal(0, SIGMA, len(steps))):
                rows.append({"family": "toy", "model_id": run, "n_params": 1e8, "step": t, "metric": "m",
                             "measure": "acc", "task": f"task{s}", "layer": None, "value": v, "stderr": SIGMA,
                             "status": "ok", "performance": "score"})
        for t in steps[steps <= 10000]:
            rows.append({"family": "toy", "model_id": run, "n_params": 1e8, "step": t, "metric": "probe",
                         "measure": "rate", "task": None, "layer": None, "value": probe, "stderr": np.nan,
                         "status": "ok", "performance": None})
    return pd.DataFrame(rows)


def test_observables_add_when_a_planted_observable_carries_the_signal():
    rec = _hidden_rate_suite()
    perf = performance_series(rec)
    feats = observable_series(rec, targets=perf["series"].unique())
    assert list(feats["series"].unique()) == ["probe.rate"]
    bt = backtest(perf, cutoffs=(0.1, 0.3), methods=[Suite(robust=False), "observables"], features=feats)
    overall = bt.summary[bt.summary.series == "all"].set_index(["method", "cutoff"])
    assert overall.loc[("observables", 0.1), "mae"] < 0.5 * overall.loc[("suite", 0.1), "mae"]
    assert "observables add over suite" in bt.verdict
    chosen = bt.forecasts[(bt.forecasts.method == "observables") & (bt.forecasts.cutoff == 0.1)]["inputs"]
    assert chosen.str.contains('"observable": "(?:log\\()?probe.rate\\)?"', regex=True).mean() > 0.9
    # control: an observable that is pure noise does not make the forecast better
    noise = _hidden_rate_suite(informative=False)
    bt0 = backtest(performance_series(noise), cutoffs=(0.1,), methods=[Suite(robust=False), "observables"],
                   features=observable_series(noise, targets=perf["series"].unique()))
    o0 = bt0.summary[bt0.summary.series == "all"].set_index("method")["mae"]
    assert o0["observables"] > 0.8 * o0["suite"]


def test_suite_leverage_guard_avoids_wild_extrapolation():
    """All but one training run sit on one plateau value at the cutoff (wsc's majority class):
    the full design extrapolates the gain from that one run to a target far off the plateau
    (an accuracy above 1 without the guard); with it, a nested design is used."""
    rng = np.random.default_rng(0)

    def case(i, yc, yT):
        return Case(run=f"r{i}", series="s", cutoff=1e4, target=1e5, steps=np.array([1e4]), values=np.array([yc]),
                    stderr=np.array([0.047]), log_n=math.log(1e8 * 2**i), realised=yT, realised_stderr=0.047)

    train = [case(i, 0.365, 0.365 + rng.normal(0, 0.01)) for i in range(6)] + [case(6, 0.40, 0.60)]
    target = case(7, 0.54, 0.365)
    wild, _ = Suite(select=False).predict(target, train)
    guarded, inputs = Suite().predict(target, train)
    assert wild > 1.0
    assert 0.2 < guarded < 0.8 and inputs["features"] != ["1", "log_n_params", "value_at_cutoff"]


# ---- the published Pythia scores (shipped with the pythia plugin) ----------------------------

PYTHIA_TARGETS = ["published:acc:lambada_openai", "published:acc:piqa", "published:acc:arc_easy", "published:acc:sciq",
                  "published:acc:winogrande", "published:acc_norm:arc_challenge", "published:acc_norm:logiqa",
                  "published:acc:wsc"]


def test_backtest_on_published_pythia_scores(tmp_path):
    """Through the real weightless source: the issue measured `last` at MAE 0.058 (cutoff step
    13000 of 143000, 8 sizes, the 8 zero-shot tasks), an independent number this reproduces;
    `suite` must beat it by more than 2x with calibrated 90% intervals. (The issue's goal of
    MAE <= 0.02 is not reached: 0.023, wsc alone 0.083; docs/forecast.md.)"""
    from harness.runner import Runner, RunSpec

    spec = RunSpec(model_name="pythia", model={"source": "published"}, metrics={"loss": {}}, data={},
                   checkpoints={"select": "all"}, run_dir=tmp_path / "pub", run_root=tmp_path / "pub",
                   progress="off", report=False)
    Runner(spec).run()
    import harness

    perf = performance_series(harness.load_results(tmp_path / "pub"), PYTHIA_TARGETS)
    assert perf["run"].nunique() == 8 and perf["series"].nunique() == 8
    bt = backtest(perf, cutoffs=(13000,), methods=["last", "suite"], target_step=143000)
    overall = bt.summary[bt.summary.series == "all"].set_index("method")
    assert overall.loc["last", "mae"] == pytest.approx(0.058, abs=0.0005)
    assert overall.loc["last", "n"] == 64 and overall.loc["suite", "n"] == 64
    assert overall.loc["suite", "mae"] < 0.5 * overall.loc["last", "mae"]
    assert 0.85 <= overall.loc["suite", "coverage"] <= 0.95


def test_series_in_different_units_are_not_averaged():
    """An accuracy and a perplexity-like series: the overall MAE would be the perplexity's; the
    backtest blanks it and ranks by MAE in stderr units, and says why."""
    perf, _ = synthetic_series(n_runs=8, n_series=2, sigma=SIGMA, seed=4)
    ppl = perf["series"] == "task1/acc"
    perf.loc[ppl, ["value", "stderr"]] *= 100
    perf.loc[ppl, "higher_is_better"] = False
    bt = backtest(perf, cutoffs=(0.1, 0.5), methods=["last", Suite(robust=False)])
    overall = bt.summary[bt.summary.series == "all"]
    assert overall["mae"].isna().all() and overall["mae_se"].notna().all()
    assert "stderr units because higher- and lower-is-better series are mixed" in bt.verdict
