"""Claims tables: each test kind decided on planted records whose verdict is known by construction."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from harness.report.claims import (
    FAILS,
    HOLDS,
    UNTESTABLE,
    claims_from_config,
    claims_of_run,
    claims_table,
    evaluate,
    kendall_exact,
)


def rec(metric, measure, value, *, model="m/a", step=100, task=None, stderr=None, status="ok", message=None,
        n=10, n_params=None, extra=None):
    return {"metric": metric, "measure": measure, "task": task, "layer": None, "model_id": model, "step": step,
            "value": value, "stderr": stderr, "n": n, "status": status, "message": message, "n_params": n_params,
            "extra": json.dumps(extra) if extra else None, "family": "fam", "size": "s"}


def frame(*rows):
    return pd.DataFrame(list(rows))


NEAR = {"claim": "slope -> 1/3", "series": "ts:slope", "test": "near", "target": 1 / 3, "tol": 0.05}


def test_near_holds_fails_and_untestable_by_interval_width():
    assert evaluate(frame(rec("ts", "slope", 0.35, stderr=0.005)), NEAR).status == HOLDS
    assert evaluate(frame(rec("ts", "slope", 0.45, stderr=0.005)), NEAR).status == FAILS
    wide = evaluate(frame(rec("ts", "slope", 0.34, stderr=0.2)), NEAR)
    assert wide.status == UNTESTABLE and "wider" in wide.reason


def test_at_last_picks_the_largest_step_and_shows_its_window():
    f = frame(rec("ts", "slope", 0.6, step=10, extra={"tau_window": [1, 3]}),
              rec("ts", "slope", 0.34, step=1000, extra={"tau_window": [300, 1000]}))
    v = evaluate(f, NEAR)
    assert v.status == HOLDS and v.value == pytest.approx(0.34)
    assert "step 1000" in v.where and "tau_window [300, 1e+03]" in v.where
    assert evaluate(f, {**NEAR, "at": "first"}).status == FAILS


def test_at_fraction_takes_first_step_at_or_after_it():
    f = frame(*[rec("s", "f", v, step=s) for s, v in [(0, 0.0), (5, 0.1), (12, 0.9), (100, 0.95)]])
    v = evaluate(f, {"series": "s:f", "test": "above", "threshold": 0.5, "at": {"fraction": 0.1}})
    assert v.status == HOLDS and "step 12" in v.where


def test_above_against_a_reference_series_times_a_factor():
    f = frame(rec("sub", "f_top", 0.5, task="k=10", stderr=0.01), rec("sub", "chance", 0.03, task="k=10"),
              rec("sub", "f_top", 0.1, task="k=10", model="m/b", stderr=0.01),
              rec("sub", "chance", 0.03, task="k=10", model="m/b"))
    claim = {"series": "sub:f_top:k=10", "ref": "sub:chance:k=10", "factor": 5, "test": "above"}
    assert evaluate(f, {**claim, "models": "m/a"}).status == HOLDS
    v = evaluate(f, claim)  # quantifier all: m/b fails (0.1 < 0.15)
    assert v.status == FAILS and "1/2 pass" in v.reason and v.where.startswith("m/b")
    assert evaluate(f, {**claim, "quantifier": "any"}).status == HOLDS


def test_interval_straddling_the_threshold_does_not_hold():
    f = frame(rec("a", "b", 0.52, stderr=0.05))
    assert evaluate(f, {"series": "a:b", "test": "above", "threshold": 0.5}).status == FAILS
    assert evaluate(f, {"series": "a:b", "test": "below", "threshold": 0.7}).status == HOLDS


def test_equals_decides_a_flag():
    f = frame(rec("ts", "power_law", 0.0, model="m/flat"), rec("ts", "power_law", 1.0, model="m/peak"))
    assert evaluate(f, {"series": "ts:power_law", "models": "*flat", "test": "equals", "expect": 0}).status == HOLDS
    assert evaluate(f, {"series": "ts:power_law", "models": "*peak", "test": "equals", "expect": 0}).status == FAILS


def test_require_flag_makes_a_flagged_curve_not_testable_with_the_metrics_reason():
    f = frame(rec("ts", "slope", 0.34), rec("ts", "power_law", 0.0, message="fit RSLE 0.2 > 0.08"))
    v = evaluate(f, {**NEAR, "require": {"series": "ts:power_law", "equals": 1}})
    assert v.status == UNTESTABLE and "fit RSLE 0.2 > 0.08" in v.reason
    f.loc[1, "value"] = 1.0
    assert evaluate(f, {**NEAR, "require": {"series": "ts:power_law", "equals": 1}}).status == HOLDS


def test_missing_or_skipped_records_are_not_testable_and_say_what_exists():
    f = frame(rec("loss", "loss", 1.0), rec("ts", "slope", None, status="skipped", message="2 usable points"))
    v = evaluate(f, NEAR)
    assert v.status == UNTESTABLE and "skipped" in v.reason and "2 usable points" in v.reason
    v = evaluate(f, {**NEAR, "series": "dec:L_d"})
    assert v.status == UNTESTABLE and "did not run" in v.reason and "loss" in v.reason


def test_trend_exact_permutation_p_matches_the_closed_form():
    # n = 4 in perfect order: only the identity and the reversal reach |tau| = 1 -> p = 2/4! = 1/12
    tau, p = kendall_exact([1, 2, 3, 4], [10, 20, 30, 40])
    assert tau == pytest.approx(1.0) and p == pytest.approx(2 / 24)
    # n = 5: p = 2/120
    assert kendall_exact([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == (pytest.approx(-1.0), pytest.approx(2 / 120))


def test_trend_claim_across_model_sizes():
    rows = [rec("dec", "L_d", 5.0 - i, model=f"m/{i}", n_params=10 ** (6 + i), step=None) for i in range(5)]
    claim = {"series": "dec:L_d", "test": "trend", "by": "n_params", "direction": -1, "alpha": 0.05}
    v = evaluate(frame(*rows), claim)
    assert v.status == HOLDS and v.value == pytest.approx(-1.0) and v.n == 5
    assert evaluate(frame(*rows), {**claim, "direction": 1}).status == FAILS
    assert evaluate(frame(*rows[:2]), claim).status == UNTESTABLE


def test_malformed_claim_is_a_row_not_an_exception():
    v = evaluate(frame(rec("a", "b", 1.0)), {"series": "nocolon", "test": "near", "target": 1, "tol": 1})
    assert v.status == UNTESTABLE and "malformed" in v.reason
    v = evaluate(frame(rec("a", "b", 1.0)), {"series": "a:b", "test": "bogus"})
    assert v.status == UNTESTABLE and "malformed" in v.reason


def test_table_has_one_row_per_claim_and_counts_statuses():
    f = frame(rec("ts", "slope", 0.35, stderr=0.005), rec("ts", "power_law", 0.0))
    claims = [NEAR, {"claim": "flag", "series": "ts:power_law", "test": "equals", "expect": 1},
              {"claim": "absent", "series": "x:y", "test": "near", "target": 0, "tol": 1}]
    t = claims_table(f, claims)
    assert list(t.data["status"]) == [HOLDS, FAILS, UNTESTABLE]
    assert t.footer == ["1 holds, 1 does not hold, 1 not testable here"]
    assert list(t.display.columns) == ["claim", "measured", "where", "status", "why"]
    assert "0.35 [" in t.display.loc[0, "measured"] and math.isfinite(t.data.loc[0, "ci_lo"])
    assert claims_table(f, []).note


def test_claims_come_from_the_run_manifest(tmp_path):
    claims = [NEAR]
    (tmp_path / "run.json").write_text(json.dumps({"config": {"claims": claims}}))
    assert claims_of_run(tmp_path) == claims
    assert claims_from_config({"claims": {"c1": {"series": "a:b", "test": "near"}}})[0]["id"] == "c1"
    assert claims_of_run(tmp_path / "nothing") == []


SHIFT = {"claim": "D rises at deceleration", "series": "int:D", "test": "shift", "split": "dec:t_d",
         "direction": 1, "alpha": 0.05}


def _shifted(model, t_d, before, after):
    rows = [rec("dec", "t_d", t_d, model=model, step=None)]
    steps = list(range(10, 10 * (len(before) + len(after)) + 1, 10))
    for s, v in zip(steps, list(before) + list(after)):
        rows.append(rec("int", "D", v, model=model, step=s))
    return rows, steps[len(before)]


def test_shift_holds_when_the_values_after_the_split_step_are_higher():
    """Planted: 5 low values before the break step, 5 high after: exact one-sided U p = 1/252."""
    rows, t_d = _shifted("m/a", 0, [0.1, 0.12, 0.11, 0.13, 0.14], [0.3, 0.31, 0.29, 0.33, 0.32])
    rows[0]["value"] = t_d  # the split is the first 'after' step
    v = evaluate(frame(*rows), SHIFT)
    assert v.status == HOLDS and v.value == pytest.approx(0.31 - 0.12, abs=1e-9)
    assert "p = 0.00397" in v.reason and "5 vs 5" in v.reason
    down = evaluate(frame(*rows), {**SHIFT, "direction": -1})
    assert down.status == FAILS


def test_shift_no_change_does_not_hold_and_too_few_points_is_not_testable():
    rows, t_d = _shifted("m/a", 0, [0.3, 0.1, 0.2, 0.3], [0.2, 0.1, 0.3, 0.2])
    rows[0]["value"] = t_d
    assert evaluate(frame(*rows), SHIFT).status == FAILS
    few, t_d = _shifted("m/b", 0, [0.1], [0.3, 0.3, 0.3])
    few[0]["value"] = t_d
    v = evaluate(frame(*few), SHIFT)
    assert v.status == UNTESTABLE and "1 point(s) before" in v.reason
    assert evaluate(frame(*[r for r in few if r["metric"] != "dec"]), SHIFT).status == UNTESTABLE


def test_shift_quantifier_all_fails_when_one_model_fails():
    up, t1 = _shifted("m/a", 0, [0.1, 0.1, 0.12], [0.3, 0.32, 0.31])
    up[0]["value"] = t1
    flat, t2 = _shifted("m/b", 0, [0.3, 0.32, 0.31], [0.1, 0.1, 0.12])
    flat[0]["value"] = t2
    both = frame(*up, *flat)
    assert evaluate(both, {**SHIFT, "alpha": 0.1}).status == FAILS
    assert evaluate(both, {**SHIFT, "alpha": 0.1, "quantifier": "any"}).status == HOLDS

# ---- differs: a departure from a reference (e.g. real minus null), z-test with BH ------------------


def _departures(rng, mean, se, steps):
    return frame(*[rec("tr", "D_departure", float(rng.normal(mean, se)), step=s, task="R1", stderr=se)
                   for s in steps])


DIFFERS = {"series": "tr:D_departure:R1", "test": "differs", "at": "all", "quantifier": "any"}


def test_differs_detects_a_planted_departure_and_names_its_p_value():
    import numpy as np

    f = _departures(np.random.default_rng(0), 0.3, 0.05, range(0, 120, 20))
    v = evaluate(f, DIFFERS)
    assert v.status == HOLDS and "q = " in v.reason and "depart (BH over 6)" in v.reason
    assert evaluate(f, {**DIFFERS, "quantifier": "all"}).status == HOLDS


def test_differs_under_a_planted_null_rejects_at_about_alpha_and_says_indistinguishable():
    import numpy as np

    from harness.report.claims import departure_pvalues

    rng = np.random.default_rng(1)
    se = rng.uniform(0.01, 0.2, size=4000)
    p, _ = departure_pvalues(rng.normal(0, se), se)
    assert 0.04 <= np.mean(p <= 0.05) <= 0.06  # nominal 0.05; binomial sd over 4000 draws ~0.0035
    # six steps, BH, `any`: under the global null BH keeps the chance of any rejection at <= alpha
    anyrej = [departure_pvalues(rng.normal(0, 0.05, 6), np.full(6, 0.05))[1].min() <= 0.05 for _ in range(2000)]
    assert np.mean(anyrej) <= 0.06
    # and through the claim: a null draw that does not reject reads "indistinguishable"
    for _ in range(20):
        v = evaluate(_departures(rng, 0.0, 0.05, [100]), {**DIFFERS, "at": "last"})
        if v.status == FAILS:
            assert "indistinguishable from 0" in v.reason and "p = " in v.reason
            break
    else:
        raise AssertionError("20 null draws all rejected")


def test_differs_against_a_reference_series_and_without_a_stderr():
    f2 = frame(rec("tr", "D", 1.30, stderr=0.02), rec("tr", "D0", 1.00))
    assert evaluate(f2, {"series": "tr:D", "ref": "tr:D0", "test": "differs"}).status == HOLDS
    f3 = frame(rec("tr", "D", 1.01, stderr=0.02), rec("tr", "D0", 1.00))
    assert evaluate(f3, {"series": "tr:D", "ref": "tr:D0", "test": "differs"}).status == FAILS
    bare = evaluate(frame(rec("tr", "D_departure", 0.5, task="R1")), DIFFERS)
    assert bare.status == UNTESTABLE and "stderr" in bare.reason


# ---- relates: partial correlation with a performance series, given step and size ------------------


def _suite(rng, coupling, sizes=("d16", "d32", "d48", "d64"), steps=range(0, 140, 20)):
    """An observable and a loss per (size, step): both trend with step and differ by size; the loss
    depends on the observable's own (step-free) component with weight ``coupling``."""
    import numpy as np

    rows = []
    for k, z in enumerate(sizes):
        for s in steps:
            own = rng.normal()
            obs = 0.5 * np.log1p(s) + 0.3 * k + own
            loss = 5.0 - 0.4 * np.log1p(s) - 0.2 * k + coupling * own + 0.5 * rng.normal()
            rows.append({**rec("tr", "v_rel", float(obs), step=s, task="real", model=f"m/{z}"), "size": z})
            rows.append({**rec("loss", "loss", float(loss), step=s, model=f"m/{z}"), "size": z})
    return frame(*rows)


RELATES = {"series": "tr:v_rel:real", "test": "relates", "performance": "loss:loss", "alpha": 0.05}


def test_relates_detects_a_planted_relation_beyond_step_and_size():
    import numpy as np

    v = evaluate(_suite(np.random.default_rng(0), 1.0), {**RELATES, "direction": 1})
    assert v.status == HOLDS and v.value > 0.5 and v.n == 28
    assert "given log(1+step) + size dummies" in v.reason
    wrong = evaluate(_suite(np.random.default_rng(0), 1.0), {**RELATES, "direction": -1})
    assert wrong.status == FAILS and "needs a negative" in wrong.reason


def test_relates_under_a_planted_null_rejects_at_about_alpha_though_both_trend_with_step():
    import numpy as np

    rng = np.random.default_rng(2)
    fast = {**RELATES, "n_perm": 999}
    raw = [evaluate(_suite(rng, 0.0), {**fast, "given": [], "within": None}).status for _ in range(10)]
    assert np.mean([s == HOLDS for s in raw]) >= 0.8  # the shared step trend alone fools a raw correlation
    adj = [evaluate(_suite(rng, 0.0), fast).status for _ in range(60)]
    assert np.mean([s == HOLDS for s in adj]) <= 0.15  # nominal 0.05; binomial sd over 60 draws ~0.03


def test_relates_with_too_few_pairs_is_not_testable():
    import numpy as np

    v = evaluate(_suite(np.random.default_rng(0), 1.0, sizes=("d16",), steps=[0, 20, 40]), RELATES)
    assert v.status == UNTESTABLE and "3 paired points" in v.reason
