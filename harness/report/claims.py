"""Claims tables: a preset states its paper's claims; a run's records decide each one.

An experiment preset (``conf/experiment/*.yaml``) lists the claims of the paper it reproduces
under the top-level ``claims`` key. Each claim is one line of text plus a *test*: a pure
function of the run's records (value, stderr, n) that returns ``holds``, ``does not hold`` or
``not testable here`` with the reason. The core names no plugin: a claim picks its records
by a series selector ``metric:measure[:task]`` (globs, as in the report tables) and optional
filters on record columns, all written in the preset::

    claims:
      - claim: "peaked targets: loss ~ tau^-alpha with asymptotic alpha -> 1/3"
        series: time_scaling:local_slope     # metric:measure[:task]
        models: "*T=0.001*"                  # glob on model_id (default: every model)
        at: last                             # last | first | all | step N | fraction of the run
        test: near                           # near | above | below | equals | trend
        target: 0.3333
        tol: 0.05
        require: {series: "time_scaling:power_law", equals: 1}   # else: not testable (the flag's reason)

Tests (``value ± 1.96 stderr`` is the 95% interval when a record has a stderr):

* ``near``: holds when |value - target| <= tol; not testable when the interval alone is wider
  than the tolerance band (the run cannot tell).
* ``above`` / ``below``: against ``threshold``, or ``factor`` × the value of a ``ref`` series of
  the same model at the same step and task (e.g. ``f_top`` vs its chance level ``k/P``):
  holds when the whole interval is on the claimed side, does not hold otherwise.
* ``equals``: the value equals ``expect`` (a flag: ``power_law = 0``).
* ``trend``: across the selected models, Kendall's tau of value against ``by`` (a numeric record
  column: ``n_params``, ``step``, ``tokens_seen``) has the sign of ``direction`` (+1/-1) with an
  exact permutation p-value <= ``alpha`` (default 0.1); fewer than ``min_n`` (default 3)
  points is not testable.
* ``shift``: within each model, the values after a step versus before it, the step being the
  value of a per-model ``split`` series of the same model (e.g. a fitted break point
  ``dec:t_d``): the mean after minus the mean before has the sign of ``direction`` with a
  one-sided Mann-Whitney U p-value <= ``alpha`` (default 0.1); fewer than ``min_n`` (default 2)
  points on either side is not testable. ``at`` defaults to ``all`` for this test.
* ``differs``: a departure test. The value minus ``ref`` (a series at the same model, step and
  task, times ``factor``; or ``threshold``, default 0, e.g. for a real-minus-null record) over
  its stderr is a two-sided z-test (p-value); with several rows (``at: all``) the p-values are
  Benjamini-Hochberg adjusted. Holds when q <= ``alpha`` (default 0.05); otherwise *does not
  hold*: the value is indistinguishable from the reference at that level. No stderr: not
  testable (the run gives no interval to test against). ``versus`` names the reference in the
  verdict's words (e.g. "the permuted-field null").
* ``relates``: the series against a ``performance`` series (a selector) paired on the record
  columns ``pair`` (default ``[size, step]``): the partial correlation given ``given`` (numeric
  columns, log(1+x); default ``[step]``) and, with ``within`` (default ``size``), one dummy per
  group, with a permutation p-value of the residuals (`harness.report.stats.partial_permutation`).
  Holds when p <= ``alpha`` (default 0.05) and the sign matches ``direction`` (+1 / -1; 0 or
  absent = either); fewer than ``min_n`` (default 5) pairs is not testable. ``at`` defaults
  to ``all`` here (every step is a point).

Several matched models (or steps, with ``at: all``) must *all* pass (``quantifier: all``,
the default) or one must (``any``). Evaluation never raises: a malformed claim becomes a row
saying what is wrong with it.

    >>> table = claims_table(frame, claims)   # a `harness.report.tables.Table` named "claims"
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable here"
STATUSES = (HOLDS, FAILS, UNTESTABLE)
TESTS = ("near", "above", "below", "equals", "trend", "differs", "relates", "shift")
Z95 = 1.959963984540054
#: exact permutations up to this many points, a seeded Monte Carlo of 20000 above
EXACT_MAX = 8


@dataclass
class Verdict:
    """The decision on one claim: status, the value it rests on with its interval, n and why."""
    status: str
    value: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    reason: str = ""
    where: str = ""  # which model / step / window the number is from


# ---- selection --------------------------------------------------------------------------


def _parts(selector: str) -> list[str]:
    parts = str(selector).split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ValueError(f"series selector {selector!r} is not metric:measure[:task]")
    return parts


def select(frame: pd.DataFrame, selector: str, models: str | Sequence[str] | None = None,
           where: Mapping[str, Any] | None = None, layer: str | None = None) -> pd.DataFrame:
    """Records of one series (all statuses), model-level unless ``layer`` is given."""
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["metric", "measure", "task", "model_id", "step", "value"])
    parts = _parts(selector)
    f = frame
    keep = f["metric"].astype(str).map(lambda v: fnmatch.fnmatchcase(v, parts[0]))
    keep &= f["measure"].astype(str).map(lambda v: fnmatch.fnmatchcase(v, parts[1]))
    if len(parts) == 3:
        keep &= f["task"].fillna("").astype(str).map(lambda v: fnmatch.fnmatchcase(v, parts[2]))
    if layer is None:
        keep &= f["layer"].isna() | (f["layer"].astype(str) == "")
    else:
        keep &= f["layer"].fillna("").astype(str).map(lambda v: fnmatch.fnmatchcase(v, layer))
    if models:
        pats = [models] if isinstance(models, str) else list(models)
        keep &= f["model_id"].astype(str).map(lambda v: any(fnmatch.fnmatchcase(v, p) for p in pats))
    for col, want in (where or {}).items():
        if col not in f:
            raise ValueError(f"where: no record column {col!r}")
        wants = want if isinstance(want, (list, tuple)) else [want]
        keep &= f[col].map(lambda v, w=wants: any(str(v) == str(x) or fnmatch.fnmatchcase(str(v), str(x)) for x in w))
    return f[keep]


def _pick(rows: pd.DataFrame, at: Any) -> pd.DataFrame:
    """Per model (and task): the record at ``at`` (last | first | all | {step: N} | {fraction: x})."""
    if rows.empty or at in (None, "all"):
        return rows
    out = []
    for _, g in rows.groupby(["model_id", rows["task"].fillna("")], sort=True):
        steps = g["step"].dropna()
        if steps.empty:  # trajectory/suite records without a step: one value per model
            out.append(g)
            continue
        if at == "last":
            s = steps.max()
        elif at == "first":
            s = steps.min()
        elif isinstance(at, Mapping) and "step" in at:
            s = int(at["step"])
        elif isinstance(at, Mapping) and "fraction" in at:
            # the first recorded step at or after this fraction of the model's last step
            goal = float(at["fraction"]) * steps.max()
            later = steps[steps >= goal]
            s = later.min() if len(later) else steps.max()
        else:
            raise ValueError(f"at must be last, first, all, {{step: N}} or {{fraction: x}}; got {at!r}")
        out.append(g[g["step"] == s])
    return pd.concat(out) if out else rows.iloc[:0]


def _interval(v: float, se: Any) -> tuple[float, float]:
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return v, v
    return v - Z95 * float(se), v + Z95 * float(se)


def _label(r: pd.Series) -> str:
    bits = [str(r["model_id"])]
    if pd.notna(r.get("step")):
        bits.append(f"step {int(r['step'])}")
    if isinstance(r.get("task"), str) and r["task"]:
        bits.append(r["task"])
    extra = r.get("extra")
    if isinstance(extra, str) and "window" in extra:
        try:
            e = json.loads(extra)
        except ValueError:
            e = {}
        for key in ("tau_window", "window", "fit_window"):
            if key in e:
                w = e[key]
                bits.append(f"{key} [{w[0]:.3g}, {w[1]:.3g}]" if isinstance(w, list) and len(w) == 2 else f"{key} {w}")
                break
    return ", ".join(bits)


# ---- tests ------------------------------------------------------------------------------


def _one(test: str, spec: Mapping[str, Any], v: float, se: Any, ref: float | None) -> tuple[str, str]:
    lo, hi = _interval(v, se)
    if test == "near":
        target, tol = float(spec["target"]), float(spec["tol"])
        if hi - lo > 2 * tol:
            return UNTESTABLE, f"95% interval [{lo:.3g}, {hi:.3g}] is wider than target ± {tol:g}"
        ok = abs(v - target) <= tol
        return (HOLDS if ok else FAILS), f"|{v:.4g} - {target:.4g}| {'<=' if ok else '>'} {tol:g}"
    if test in ("above", "below"):
        if "ref" in spec:
            if ref is None or not math.isfinite(ref):
                return UNTESTABLE, f"no ok {spec['ref']} record at the same model/step/task"
            thr, what = float(spec.get("factor", 1.0)) * ref, f"{spec.get('factor', 1.0):g} x {spec['ref']} = "
        else:
            thr, what = float(spec["threshold"]), ""
        if test == "above":
            ok = lo > thr
            return (HOLDS if ok else FAILS), f"lower 95% bound {lo:.3g} {'>' if ok else '<='} {what}{thr:.3g}"
        ok = hi < thr
        return (HOLDS if ok else FAILS), f"upper 95% bound {hi:.3g} {'<' if ok else '>='} {what}{thr:.3g}"
    if test == "equals":
        expect = float(spec["expect"])
        ok = abs(v - expect) <= float(spec.get("tol", 1e-9))
        return (HOLDS if ok else FAILS), f"{v:g} {'=' if ok else '!='} {expect:g}"
    raise ValueError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")


def _margin(test: str, spec: Mapping[str, Any], v: float) -> float:
    """How far a value is on the claimed side (larger = safer); for choosing what to show."""
    if test == "near":
        return float(spec["tol"]) - abs(v - float(spec["target"]))
    if test == "above":
        return v
    if test == "below":
        return -v
    return 0.0


def kendall_exact(x: Sequence[float], y: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Kendall's tau and its two-sided permutation p-value (exact enumeration up to `EXACT_MAX`
    points, a seeded Monte Carlo of 20000 permutations above)."""
    from scipy.stats import kendalltau

    x, y = np.asarray(x, float), np.asarray(y, float)
    tau = float(kendalltau(x, y).statistic)
    if not math.isfinite(tau):
        return float("nan"), float("nan")
    if len(y) <= EXACT_MAX:
        perms = (np.asarray(p) for p in itertools.permutations(range(len(y))))
        null = np.array([kendalltau(x, y[p]).statistic for p in perms])
    else:
        rng = np.random.default_rng(seed)
        null = np.array([kendalltau(x, rng.permutation(y)).statistic for _ in range(20000)])
    p = float(np.mean(np.abs(null) >= abs(tau) - 1e-12))
    return tau, p


def _trend(spec: Mapping[str, Any], rows: pd.DataFrame) -> Verdict:
    by = spec.get("by", "n_params")
    if by not in rows:
        return Verdict(UNTESTABLE, reason=f"no record column {by!r} to order by")
    pts = rows.dropna(subset=["value", by])
    pts = pts[np.isfinite(pts["value"].astype(float))]
    need = int(spec.get("min_n", 3))
    if len(pts) < need:
        return Verdict(UNTESTABLE, n=len(pts), reason=f"{len(pts)} points, the trend test needs >= {need}")
    if pts[by].nunique() < 2:
        return Verdict(UNTESTABLE, n=len(pts), reason=f"every point has the same {by}")
    tau, p = kendall_exact(pts[by].astype(float), pts["value"].astype(float))
    direction = 1 if float(spec.get("direction", 1)) > 0 else -1
    alpha = float(spec.get("alpha", 0.1))
    word = "rises" if direction > 0 else "falls"
    if not math.isfinite(tau):
        return Verdict(UNTESTABLE, n=len(pts), reason="Kendall's tau undefined (constant values)")
    ok = tau * direction > 0 and p <= alpha
    why = f"Kendall tau = {tau:+.2f} vs {by}, exact permutation p = {p:.3g} ({'<=' if p <= alpha else '>'} {alpha:g})"
    if tau * direction <= 0:
        why += f"; the claim needs it to {'rise' if direction > 0 else 'fall'}"
    return Verdict(HOLDS if ok else FAILS, value=tau, n=len(pts), reason=why,
                   where=f"{len(pts)} points: value {word} with {by}?")


def _quantifier(spec: Mapping[str, Any]) -> str:
    """The claim's ``quantifier`` (``all``, the default, or ``any``)."""
    quant = spec.get("quantifier", "all")
    if quant not in ("all", "any"):
        raise ValueError(f"quantifier must be all or any, got {quant!r}")
    return quant


def _shift(spec: Mapping[str, Any], frame: pd.DataFrame, rows: pd.DataFrame) -> Verdict:
    """Before/after comparison within each model around the step a ``split`` series gives."""
    from scipy.stats import mannwhitneyu

    if "split" not in spec:
        raise ValueError("test shift needs split: a per-model series giving the step (e.g. dec:t_d)")
    splits = select(frame, spec["split"], spec.get("models"), spec.get("where"))
    splits = splits[splits["status"] == "ok"]
    direction = 1 if float(spec.get("direction", 1)) > 0 else -1
    alpha, need = float(spec.get("alpha", 0.1)), int(spec.get("min_n", 2))
    alternative = "greater" if direction > 0 else "less"
    results: list[tuple[str, str, str, float, int]] = []
    for model_id, g in rows.groupby("model_id", sort=True):
        t = splits[splits["model_id"] == model_id]["value"].astype(float)
        t = t[np.isfinite(t)]
        if t.empty:
            results.append((UNTESTABLE, f"{model_id}: no ok {spec['split']} record", str(model_id), math.nan, 0))
            continue
        t0 = float(t.iloc[0])
        g = g.dropna(subset=["step", "value"])
        g = g[np.isfinite(g["value"].astype(float))]
        before = g[g["step"].astype(float) < t0]["value"].astype(float).to_numpy()
        after = g[g["step"].astype(float) >= t0]["value"].astype(float).to_numpy()
        where = f"{model_id}, split at step {t0:.4g}"
        if len(before) < need or len(after) < need:
            results.append((UNTESTABLE, f"{where}: {len(before)} point(s) before, {len(after)} after; needs "
                            f">= {need} on each side", str(model_id), math.nan, len(g)))
            continue
        diff = float(after.mean() - before.mean())
        p = float(mannwhitneyu(after, before, alternative=alternative).pvalue)
        ok = diff * direction > 0 and p <= alpha
        why = (f"{where}: mean after - before = {diff:+.3g} ({len(after)} vs {len(before)} points), "
               f"one-sided Mann-Whitney p = {p:.3g} ({'<=' if p <= alpha else '>'} {alpha:g})")
        results.append((HOLDS if ok else FAILS, why, where, diff, len(g)))
    quant = _quantifier(spec)
    order = (HOLDS, UNTESTABLE, FAILS) if quant == "any" else (FAILS, UNTESTABLE, HOLDS)
    statuses = [r[0] for r in results]
    status = next(s for s in order if s in statuses)
    decide = next(r for r in results if r[0] == status)
    why = decide[1]
    if len(results) > 1:
        why += f"; {statuses.count(HOLDS)}/{len(results)} models pass"
    return Verdict(status, value=decide[3] if math.isfinite(decide[3]) else None, n=decide[4], reason=why,
                   where=decide[2])


def departure_pvalues(diffs: Sequence[float], stderrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided normal p-values of ``diff / stderr`` and their BH adjustment (= p for one row)."""
    from scipy.stats import norm

    from harness.report.stats import bh

    z = np.asarray(diffs, float) / np.asarray(stderrs, float)
    p = 2 * norm.sf(np.abs(z))
    return p, (bh(p) if p.size > 1 else p)


def _differs(spec: Mapping[str, Any], rows: pd.DataFrame, ref_rows: pd.DataFrame | None) -> Verdict:
    """Two-sided z-tests of (value - reference) / stderr, BH over the rows (see the module docstring)."""
    alpha = float(spec.get("alpha", 0.05))
    cases = []  # (diff, se, reference, row)
    missing_se = 0
    for _, r in rows.iterrows():
        v = float(r["value"])
        if "ref" in spec:
            ref = _ref_value(ref_rows, r)
            if ref is None:
                continue
            ref *= float(spec.get("factor", 1.0))
        else:
            ref = float(spec.get("threshold", 0.0))
        se = r.get("stderr")
        if se is None or not (isinstance(se, (int, float)) and math.isfinite(float(se)) and float(se) > 0):
            missing_se += 1
            continue
        if math.isfinite(v):
            cases.append((v - ref, float(se), ref, r))
    if not cases:
        why = (f"{missing_se} record(s) without a stderr: no interval to test a departure against"
               if missing_se else f"no {spec.get('ref')} record at the same model/step/task")
        return Verdict(UNTESTABLE, reason=why)
    p, q = departure_pvalues([c[0] for c in cases], [c[1] for c in cases])
    passed = q <= alpha
    quant = _quantifier(spec)
    ok = bool(passed.any() if quant == "any" else passed.all())
    # the deciding case: the strongest departure when `any` holds, else the weakest
    i = int(np.argmin(q)) if (quant == "any") == ok else int(np.argmax(q))
    d, se, ref, r = cases[i]
    against = str(spec.get("versus") or (spec["ref"] if "ref" in spec else f"{ref:g}"))
    word = "q" if len(p) > 1 else "p"
    why = (f"value - {against} = {d:+.3g} ± {se:.2g} (z = {d / se:+.2f}), {word} = {q[i]:.3g} "
           f"{'<=' if q[i] <= alpha else '>'} {alpha:g}")
    if not ok:
        why += f": indistinguishable from {against} at this level"
    if len(p) > 1:
        why += f"; {int(passed.sum())}/{len(p)} depart (BH over {len(p)})"
    if missing_se:
        why += f"; {missing_se} without a stderr left out"
    v = float(r["value"])
    return Verdict(HOLDS if ok else FAILS, value=v, lo=v - Z95 * se, hi=v + Z95 * se,
                   n=int(r["n"]) if pd.notna(r.get("n")) else len(cases), reason=why, where=_label(r))


def _ref_value(ref_rows: pd.DataFrame | None, r: pd.Series) -> float | None:
    if ref_rows is None or ref_rows.empty:
        return None
    m = ref_rows[(ref_rows["model_id"] == r["model_id"])
                 & ((ref_rows["step"] == r["step"]) | (ref_rows["step"].isna() & pd.isna(r["step"])))
                 & (ref_rows["task"].fillna("") == (r["task"] if isinstance(r["task"], str) else ""))]
    return float(m["value"].iloc[0]) if len(m) else None


def _relates(spec: Mapping[str, Any], frame: pd.DataFrame, rows: pd.DataFrame) -> Verdict:
    """Partial correlation of the series with a performance series on paired records."""
    from harness.report.stats import fisher_ci, partial_permutation

    perf_sel = spec["performance"]
    on = list(spec.get("pair", ["size", "step"]))
    given = list(spec.get("given", ["step"]))
    within = spec.get("within", "size")
    perf = select(frame, perf_sel)
    perf = perf[perf["status"] == "ok"]
    if perf.empty:
        return Verdict(UNTESTABLE, reason=_not_ok_reason(perf, perf_sel) + _what_exists(frame, {"series": perf_sel}))
    for col in on + given + ([within] if within else []):
        if col not in rows or col not in perf:
            return Verdict(UNTESTABLE, reason=f"no record column {col!r} to pair or adjust by")
    x = rows.dropna(subset=on).groupby(on)["value"].mean().rename("x")
    y = perf.dropna(subset=on).groupby(on)["value"].mean().rename("y")
    pts = pd.concat([x, y], axis=1, join="inner").reset_index()
    pts = pts[np.isfinite(pts["x"].astype(float)) & np.isfinite(pts["y"].astype(float))]
    need = int(spec.get("min_n", 5))
    if len(pts) < need:
        return Verdict(UNTESTABLE, n=len(pts), reason=f"{len(pts)} paired points on {on}, the test needs >= {need}")
    cov = [np.log1p(pts[c].astype(float).to_numpy()) for c in given if c in pts]
    if within:
        groups = pd.get_dummies(pts[within].astype(str), drop_first=True).to_numpy(float)
        cov += list(groups.T)
    covariates = np.column_stack(cov) if cov else None
    r, p, df = partial_permutation(pts["x"].to_numpy(float), pts["y"].to_numpy(float), covariates,
                                   n_perm=int(spec.get("n_perm", 9999)), seed=int(spec.get("seed", 0)))
    adj = " + ".join([f"log(1+{c})" for c in given] + ([f"{within} dummies"] if within else [])) or "nothing"
    if not math.isfinite(r):
        return Verdict(UNTESTABLE, n=len(pts), reason=f"partial correlation undefined given {adj} ({df} dof left)")
    lo, hi = fisher_ci(r, len(pts), 0 if covariates is None else covariates.shape[1])
    alpha = float(spec.get("alpha", 0.05))
    direction = int(np.sign(float(spec.get("direction", 0) or 0)))
    ok = p <= alpha and (direction == 0 or np.sign(r) == direction)
    why = f"partial r = {r:+.2f} given {adj}, permutation p = {p:.3g} ({'<=' if p <= alpha else '>'} {alpha:g})"
    if direction and np.sign(r) != direction:
        why += f"; the claim needs a {'positive' if direction > 0 else 'negative'} relation"
    return Verdict(HOLDS if ok else FAILS, value=r, lo=lo if math.isfinite(lo) else None,
                   hi=hi if math.isfinite(hi) else None, n=len(pts), reason=why,
                   where=f"{len(pts)} points paired on {', '.join(on)} with {perf_sel}")


def _not_ok_reason(rows: pd.DataFrame, selector: str) -> str:
    bad = rows[rows["status"] != "ok"]
    if len(bad):
        msg = bad["message"].dropna()
        first = f": {msg.iloc[0]}" if len(msg) else ""
        return f"{len(bad)} {selector} record(s) {'/'.join(sorted(bad['status'].unique()))}{first}"
    return f"no {selector} record"


def evaluate(frame: pd.DataFrame, claim: Mapping[str, Any]) -> Verdict:
    """Decide one claim from records (never raises: a bad claim is `not testable` with why)."""
    try:
        return _evaluate(frame, claim)
    except (KeyError, ValueError, TypeError) as exc:
        return Verdict(UNTESTABLE, reason=f"claim is malformed: {type(exc).__name__}: {exc}")


def _evaluate(frame: pd.DataFrame, claim: Mapping[str, Any]) -> Verdict:
    test = claim.get("test")
    if test not in TESTS:
        raise ValueError(f"test {test!r}; choose one of {', '.join(TESTS)}")
    if claim.get("untestable"):
        return Verdict(UNTESTABLE, reason=str(claim["untestable"]))
    series = claim["series"]
    rows_all = select(frame, series, claim.get("models"), claim.get("where"), claim.get("layer"))
    rows = rows_all[rows_all["status"] == "ok"] if len(rows_all) else rows_all
    if rows.empty:
        return Verdict(UNTESTABLE, reason=_not_ok_reason(rows_all, series) + _what_exists(frame, claim))
    rows = _pick(rows, claim.get("at", "all" if test in ("relates", "shift") else "last"))
    req = claim.get("require")
    flagged: list[str] = []
    if req:
        flags = select(frame, req["series"], claim.get("models"), claim.get("where"))
        flags = flags[flags["status"] == "ok"]
        keep = []
        for model_id in rows["model_id"].unique():
            f = flags[flags["model_id"] == model_id]
            if len(f) and (np.abs(f["value"].astype(float) - float(req.get("equals", 1))) < 1e-9).all():
                keep.append(model_id)
            else:
                why = f["message"].dropna().iloc[0] if len(f) and f["message"].notna().any() else (
                    "not measured" if f.empty else f"{req['series']} = {f['value'].iloc[0]:g}")
                flagged.append(f"{model_id}: {why}")
        rows = rows[rows["model_id"].isin(keep)]
        if rows.empty:
            return Verdict(UNTESTABLE, reason="flagged by the metric: " + "; ".join(flagged))
    if test == "trend":
        return _trend(claim, rows)
    if test == "relates":
        return _relates(claim, frame, rows)
    if test == "shift":
        return _shift(claim, frame, rows)
    ref_rows = None
    if "ref" in claim:
        ref_rows = select(frame, claim["ref"], claim.get("models"), claim.get("where"))
        ref_rows = ref_rows[ref_rows["status"] == "ok"]
    if test == "differs":
        return _differs(claim, rows, ref_rows)
    results = []
    for _, r in rows.iterrows():
        v = float(r["value"])
        if not math.isfinite(v):
            results.append((UNTESTABLE, "non-finite value", r, v))
            continue
        ref = _ref_value(ref_rows, r)
        status, why = _one(test, claim, v, r.get("stderr"), ref)
        if test == "equals" and isinstance(r.get("message"), str) and r["message"]:
            why += f" ({r['message']})"  # a flag's value says little without its metric's reason
        results.append((status, why, r, v))
    statuses = [s for s, *_ in results]
    order = (HOLDS, UNTESTABLE, FAILS) if _quantifier(claim) == "any" else (FAILS, UNTESTABLE, HOLDS)
    status = next(s for s in order if s in statuses)
    # show the deciding case: among the results with the overall status, the one closest to
    # the other side (the weakest pass, or the worst failure)
    same = [x for x in results if x[0] == status]
    decide = min(same, key=lambda x: _margin(test, claim, x[3])) if status == HOLDS else \
        max(same, key=lambda x: -_margin(test, claim, x[3]))
    _, why, r, v = decide
    lo, hi = _interval(v, r.get("stderr"))
    n_ok = statuses.count(HOLDS)
    where = _label(r)
    if len(results) > 1:
        vals = [x[3] for x in results]
        why = f"{why}; {n_ok}/{len(results)} pass (values {min(vals):.3g} .. {max(vals):.3g})"
    if flagged:
        why += f"; {len(flagged)} flagged, left out: " + "; ".join(flagged)
    n = int(r["n"]) if pd.notna(r.get("n")) else len(results)
    return Verdict(status, value=v, lo=lo, hi=hi, n=n, reason=why, where=where)


def _what_exists(frame: pd.DataFrame, claim: Mapping[str, Any]) -> str:
    if frame is None or frame.empty:
        return " (the run has no records)"
    metric = _parts(claim["series"])[0]
    have = frame[frame["metric"].astype(str).map(lambda m: fnmatch.fnmatchcase(m, metric))]
    if have.empty:
        ran = ", ".join(sorted(frame["metric"].astype(str).unique()))
        return f" (metric {metric!r} did not run; metrics here: {ran})"
    if claim.get("models"):
        ids = sorted(have["model_id"].astype(str).unique())
        return f" for models {claim['models']!r} (models here: {', '.join(ids[:6])}{' ...' if len(ids) > 6 else ''})"
    return ""


# ---- the table --------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.4g}"


def claims_table(frame: pd.DataFrame, claims: Sequence[Mapping[str, Any]] | None):
    """The claims table (a `harness.report.tables.Table` named ``claims``): one row per claim."""
    from harness.report.tables import Table

    claims = list(claims or [])
    if not claims:
        return Table("claims", pd.DataFrame(), pd.DataFrame(), note="this run states no claims (presets do)")
    data, display = [], []
    for i, c in enumerate(claims):
        c = dict(c) if isinstance(c, Mapping) else {"claim": str(c), "test": None}
        v = evaluate(frame, c)
        measured = ""
        if v.value is not None and math.isfinite(v.value):
            measured = _fmt(v.value)
            if v.lo is not None and v.hi is not None and v.hi > v.lo:
                measured += f" [{_fmt(v.lo)}, {_fmt(v.hi)}]"
            if v.n:
                measured += f" (n={v.n})"
        data.append({"id": c.get("id", f"c{i + 1}"), "claim": c.get("claim", ""), "source": c.get("source", ""),
                     "series": c.get("series", ""), "test": c.get("test"), "value": v.value, "ci_lo": v.lo,
                     "ci_hi": v.hi, "n": v.n, "status": v.status, "where": v.where, "reason": v.reason})
        display.append({"claim": c.get("claim", ""), "measured": measured, "where": v.where,
                        "status": v.status, "why": v.reason})
    d = pd.DataFrame(data)
    counts = d["status"].value_counts()
    footer = [", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)]
    return Table("claims", d, pd.DataFrame(display), footer=footer)


def claims_from_config(config: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The ``claims`` list of a composed (plain) config; [] when it has none."""
    claims = (config or {}).get("claims") or []
    if isinstance(claims, Mapping):  # a mapping id -> claim is accepted too
        claims = [{"id": k, **v} for k, v in claims.items()]
    return [dict(c) for c in claims]


def claims_of_run(run_dir: Path) -> list[dict[str, Any]]:
    """The claims a run's manifest(s) declare (``run.json`` -> config.claims), first found."""
    run_dir = Path(run_dir)
    manifests = [run_dir / "run.json"] if (run_dir / "run.json").exists() else sorted(run_dir.rglob("run.json"))
    for m in manifests:
        try:
            claims = claims_from_config(json.loads(m.read_text()).get("config"))
        except (OSError, ValueError) as exc:
            logger.warning("claims: cannot read %s: %s", m, exc)
            continue
        if claims:
            return claims
    return []


def rich_claims(table: Any, title: str = "claims (this run's verdict on the paper's claims)") -> Any:
    """The claims table for the terminal: text columns left-aligned, status coloured."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    rt = RichTable(title=title, show_lines=True)
    if table.display.empty:
        rt.add_column("note")
        rt.add_row(escape(table.note or "no claims"))
        return rt
    colour = {HOLDS: "green", FAILS: "red", UNTESTABLE: "yellow"}
    for c in table.display.columns:
        rt.add_column(str(c), justify="left", overflow="fold", no_wrap=c == "status",
                      ratio=3 if c in ("claim", "why") else 1 if c == "status" else 2)
    for row in table.display.itertuples(index=False):
        cells = [escape("" if v is None else str(v)) for v in row]
        i = list(table.display.columns).index("status")
        cells[i] = f"[{colour.get(row.status, 'white')}]{cells[i]}[/]"
        rt.add_row(*cells)
    rt.caption = "\n".join(table.footer) or None
    return rt


def print_claims(console: Any, frame: pd.DataFrame, config: Mapping[str, Any] | None) -> None:
    """End of a run: the claims table on the terminal, when the config states claims (never raises)."""
    claims = claims_from_config(config)
    if not claims:
        return
    try:
        console.print(rich_claims(claims_table(frame, claims)))
    except Exception as exc:  # noqa: BLE001 (the run's records are safe; the table is extra)
        logger.warning("claims table failed: %s", exc)
