"""Relations at the step and model levels, the baseline comparison of every row, and verdicts.

Three levels relate an observable to a performance measure (docs/reports.md):

1. **checkpoint** (`harness.report.tables.relation`): points are checkpoints; baseline
   log(tokens or step) and size; permutations within runs.
2. **step** (`step_relation`): for suite metrics that give one number per aligned step (records
   of scope ``suite`` with a step): the series against the performance at the same step,
   averaged over the sizes and per size; baseline log(1+step).
3. **model** (`model_relation`): one point per training run: run-level observables (trajectory
   metrics, suite results at the run's size and last aligned step, per-checkpoint observables at
   the final step, and every series at an early step) against the final performance; baseline
   log(n_params) (or the size order), plus log(tokens) where runs share a size. Few runs: exact
   permutation p-values and leave-one-run-out sign stability.

Every row says whether the observable adds anything over its baseline: the partial correlation
given the baseline (Fisher-z interval, permutation p) and the out-of-sample gain (leave-one-out
R² of baseline + observable minus baseline alone, bootstrap interval over held-out groups). BH
over each table. `verdict` turns a table into one line of plain words, and refuses when there are
too few points, saying how many are missing.

    >>> m = model_relation(frame)        # Table; m.footer[0] is the verdict
    >>> s = step_relation(frame)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.report import stats as S
from harness.report.tables import Table, _flagged, fmt_value, performance_series, series_label

#: fewest points a level needs before its verdict may say anything (an exact two-sided
#: permutation p of n=4 points is at least 1/12: nothing could pass 0.05)
MIN_POINTS = {"checkpoint": 5, "step": 5, "model": 5}
ALPHA = 0.05
COLUMNS = ["family", "level", "observable", "performance", "baseline", "n", "spearman", "spearman_p", "kendall",
           "partial_r", "partial_lo", "partial_hi", "partial_p", "gain", "gain_lo", "gain_hi", "sign_agree",
           "sign_n", "q_bh"]


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    f = frame[(frame["status"] == "ok") & frame["layer"].isna() & frame["value"].notna()].copy()
    f["task"] = f["task"].fillna("")
    return f[~f["warning"].map(_flagged)]


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kmbt])$", re.I)


def size_number(size) -> float:
    """``70m`` -> 7e7, ``1.4b`` -> 1.4e9 (the size order where n_params is unknown), else NaN."""
    m = _SIZE.match(str(size or ""))
    if not m:
        return float("nan")
    return float(m[1]) * {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m[2].lower()]


# ---- one row ------------------------------------------------------------------------------------


def relate(x, y, baseline: np.ndarray | None, groups=None, *, n_perm: int = 9999, n_boot: int = 1000,
           seed: int = 0, sign: bool = True) -> dict:
    """Every statistic of one (observable, performance) pair given the baseline columns."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    row: dict = {"n": n}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        row["note"] = "constant " + ("observable" if np.ptp(x) == 0 else "performance")
        return row
    row["spearman"] = S.spearman(x, y)
    row["kendall"] = S.kendall(x, y)
    row["spearman_p"] = S.permutation_pvalue(x, y, n_perm=n_perm, seed=seed)
    k = 0 if baseline is None else np.asarray(baseline).reshape(n, -1).shape[1]
    if baseline is None or k == 0:
        row["partial_r"] = float(np.corrcoef(x, y)[0, 1])
        row["partial_p"] = S.permutation_pvalue(x, y, statistic="pearson", n_perm=n_perm, seed=seed)
    else:
        row["partial_r"], row["partial_p"], _ = S.partial_permutation(x, y, baseline, n_perm=n_perm, seed=seed)
    row["partial_lo"], row["partial_hi"] = S.fisher_ci(row["partial_r"], n, k)
    row["gain"], row["gain_lo"], row["gain_hi"] = S.loo_gain(x, y, baseline, groups, n_boot=n_boot, seed=seed)
    if sign:
        row["sign_agree"], row["sign_n"] = S.loo_sign_stability(x, y, baseline)
    return row


# ---- model level ----------------------------------------------------------------------------------


def model_points(frame: pd.DataFrame, performance: Sequence[str] | None = None, *,
                 early_step: int | None = None, early_fraction: float = 0.1):
    """One row per run: final performance per series, run-level observables, covariates.

    Returns (points, performance labels, observable labels, early step used or None).
    """
    f = _ok(frame)
    if f.empty:
        return pd.DataFrame(), [], [], None
    f = f[f["model_id"].notna() & ~f["model_id"].astype(str).str.endswith(":suite")]
    perf = performance_series(f, performance)
    perf_set = set(perf)
    ckpt = f[f["scope"].isin(["checkpoint", "pair"]) & f["step"].notna()]
    runs = f[["family", "model_id"]].drop_duplicates().sort_values(["family", "model_id"])
    finals = ckpt.groupby(["family", "model_id"])["step"].max()
    # the early step: the largest step every run has at or below early_fraction of the shortest run
    early = early_step
    if early is None and not finals.empty:
        limit = early_fraction * finals.min()
        shared = None
        for (fam, mid), g in ckpt.groupby(["family", "model_id"]):
            steps = set(g["step"].astype(int))
            shared = steps if shared is None else shared & steps
        cands = sorted(s for s in (shared or ()) if 0 < s <= limit)
        early = cands[-1] if cands else None
    pts = runs.copy()
    meta = f.groupby(["family", "model_id"]).agg(size=("size", "last"), n_params=("n_params", "max"))
    pts = pts.join(meta, on=["family", "model_id"])
    tok = ckpt.sort_values("step").groupby(["family", "model_id"])["tokens_seen"].last()
    pts["tokens_final"] = [tok.get((a, b), np.nan) for a, b in zip(pts["family"], pts["model_id"])]
    pts["step_final"] = [finals.get((a, b), np.nan) for a, b in zip(pts["family"], pts["model_id"])]
    cols: dict[str, list] = {}
    perf_labels, obs_labels = [], []

    def last_by(sub: pd.DataFrame, keys: list[str]) -> dict:
        sub = sub.sort_values("step", kind="mergesort", na_position="first")
        return {tuple(k): v for k, v in zip(sub[keys].itertuples(index=False, name=None), sub["value"])}

    ck_final = last_by(ckpt, ["family", "model_id", "metric", "measure", "task"])
    ck_at = {(a, b, c, d, e, int(s)): v for a, b, c, d, e, s, v in ckpt[
        ["family", "model_id", "metric", "measure", "task", "step", "value"]].itertuples(index=False)}
    series_ck = sorted(set(zip(ckpt["metric"], ckpt["measure"], ckpt["task"])))
    for s in perf:
        lab = series_label(*s)
        perf_labels.append(lab)
        cols[lab] = [ck_final.get((a, b, *s), np.nan) for a, b in zip(pts["family"], pts["model_id"])]
    traj = f[f["scope"] == "trajectory"]
    tr_last = last_by(traj, ["family", "model_id", "metric", "measure", "task"])
    for s in sorted(set(zip(traj["metric"], traj["measure"], traj["task"])) - perf_set):
        lab = series_label(*s)
        obs_labels.append(lab)
        cols[lab] = [tr_last.get((a, b, *s), np.nan) for a, b in zip(pts["family"], pts["model_id"])]
    suite = f[(f["scope"] == "suite") & f["size"].notna()]
    su_last = last_by(suite, ["family", "size", "metric", "measure", "task"])
    for s in sorted(set(zip(suite["metric"], suite["measure"], suite["task"])) - perf_set):
        lab = series_label(*s) + " (final aligned step)"
        obs_labels.append(lab)
        cols[lab] = [su_last.get((a, z, *s), np.nan) for a, z in zip(pts["family"], pts["size"])]
    for s in series_ck:
        if s in perf_set:
            continue
        lab = series_label(*s) + " @final"
        obs_labels.append(lab)
        cols[lab] = [ck_final.get((a, b, *s), np.nan) for a, b in zip(pts["family"], pts["model_id"])]
    if early is not None:
        for s in series_ck:
            lab = f"{series_label(*s)} @step{int(early)}"
            obs_labels.append(lab)
            cols[lab] = [ck_at.get((a, b, *s, int(early)), np.nan) for a, b in zip(pts["family"], pts["model_id"])]
    pts = pd.concat([pts.reset_index(drop=True), pd.DataFrame(cols)], axis=1)
    return pts, perf_labels, obs_labels, early


def _model_baseline(pts: pd.DataFrame) -> tuple[str, np.ndarray | None]:
    cols, names = [], []
    n_params = pts["n_params"].to_numpy(float)
    if np.isfinite(n_params).all() and np.ptp(n_params) > 0:
        cols.append(np.log(n_params))
        names.append("log(n_params)")
    else:
        order = np.array([size_number(s) for s in pts["size"]])
        if np.isfinite(order).all() and np.ptp(order) > 0:
            cols.append(np.log(order))
            names.append("log(size)")
    tok = pts["tokens_final"].to_numpy(float)
    shared_size = pts["size"].duplicated(keep=False).any()
    if shared_size and np.isfinite(tok).all() and (tok > 0).all() and np.ptp(tok) > 0:
        cols.append(np.log(tok))
        names.append("log(tokens)")
    if not cols:
        return "no baseline (runs share one size and token count)", None
    return " + ".join(names), np.column_stack(cols)


def model_relation(frame: pd.DataFrame, performance: Sequence[str] | None = None, observables=None, *,
                   early_step: int | None = None, n_perm: int = 9999, n_boot: int = 1000, seed: int = 0,
                   min_runs: int = MIN_POINTS["model"]) -> Table:
    """Run-level observables vs final performance, one point per run (see the module docstring)."""
    pts_all, perf, obs, early = model_points(frame, performance, early_step=early_step)
    name = "relation_model"
    if pts_all.empty:
        return _empty(name, "no ok records of any run")
    if not perf:
        return _empty(name, "no performance measure declared in these records (choose with performance=[...])")
    if observables:  # globs on the observable labels
        import fnmatch

        obs = [o for o in obs if any(fnmatch.fnmatchcase(o, pat) for pat in observables)]
    rows, verdicts = [], []
    for fam, pts in pts_all.groupby("family", sort=True):
        pts = pts.reset_index(drop=True)
        base_name, base = _model_baseline(pts)
        for p in perf:
            y_all = pts[p].to_numpy(float)
            cands = ([(base_name, base[:, 0])] if base is not None else []) + [(o, pts[o].to_numpy(float)) for o in obs]
            for o, x_all in cands:
                ok = np.isfinite(x_all) & np.isfinite(y_all)
                if base is not None:
                    ok &= np.isfinite(base).all(axis=1)
                n = int(ok.sum())
                if n < 3:
                    continue
                is_base = o == base_name
                b = None if (base is None or is_base) else base[ok]
                row = {"family": fam, "level": "model", "observable": o, "performance": p, "baseline": base_name,
                       **relate(x_all[ok], y_all[ok], b, None, n_perm=n_perm, n_boot=n_boot, seed=seed)}
                row["is_baseline"] = is_base
                rows.append(row)
        n_runs = len(pts)
        verdicts.append((fam, n_runs, base_name))
    return _finish(name, rows, "model", min_runs, verdicts, extra_footer=[
        "points: one per run (final checkpoint for performance and per-checkpoint observables; last "
        "record of trajectory/suite metrics)" + (f"; early step: {early}" if early is not None else ""),
        "p: exact permutation (all n! pairings for n <= 8); sign: leave-one-run-out subsets keeping the sign; "
        "gain: leave-one-run-out R² of baseline + observable minus baseline, bootstrap 95% over runs"])


# ---- step level -----------------------------------------------------------------------------------


def step_relation(frame: pd.DataFrame, performance: Sequence[str] | None = None, *, n_perm: int = 9999,
                  n_boot: int = 1000, seed: int = 0, min_steps: int = MIN_POINTS["step"]) -> Table:
    """Per-step suite series vs the performance at the same step (mean over sizes, and per size)."""
    name = "relation_step"
    f = _ok(frame)
    if f.empty:
        return _empty(name, "no ok records")
    suite = f[(f["scope"] == "suite") & f["step"].notna()]
    if suite.empty:
        return _empty(name, "no per-step suite series (a suite metric giving one number per aligned step, "
                            "e.g. transport)")
    perf = performance_series(f, performance)
    if not perf:
        return _empty(name, "no performance measure declared in these records (choose with performance=[...])")
    ckpt = f[f["scope"].isin(["checkpoint", "pair"]) & f["step"].notna()]
    rows, verdicts = [], []
    for fam, sf in suite.groupby("family", sort=True):
        cf = ckpt[ckpt["family"] == fam]
        sizes = sorted(cf["size"].dropna().unique(), key=lambda z: (size_number(z), str(z)))
        series = sorted(set(zip(sf["metric"], sf["measure"], sf["task"])))
        n_steps_seen = 0
        for p in perf:
            pc = cf[(cf["metric"] == p[0]) & (cf["measure"] == p[1]) & (cf["task"] == p[2])]
            if pc.empty:
                continue
            by_size = pc.groupby(["step", "size"])["value"].mean().unstack("size")
            for s in series:
                ss = sf[(sf["metric"] == s[0]) & (sf["measure"] == s[1]) & (sf["task"] == s[2])]
                pooled = ss[ss["size"].isna()].groupby("step")["value"].mean()
                per_size = ss[ss["size"].notna()].groupby(["step", "size"])["value"].mean()
                levels = [("mean over sizes", None)] + [(f"size {z}", z) for z in sizes]
                for lev, z in levels:
                    if z is None:
                        x = pooled if not pooled.empty else per_size.groupby("step").mean()
                        full = by_size.dropna(how="any")  # steps where every size has the score
                        y = full.mean(axis=1)
                    else:
                        x = per_size.xs(z, level="size") if not per_size.empty and z in per_size.index.get_level_values(
                            "size") else pooled
                        y = by_size[z].dropna() if z in by_size else pd.Series(dtype=float)
                    common = sorted(set(x.index) & set(y.index))
                    if len(common) < 3:
                        continue
                    xv, yv = x.loc[common].to_numpy(float), y.loc[common].to_numpy(float)
                    steps = np.asarray(common, float)
                    n_steps_seen = max(n_steps_seen, len(common))
                    for o, xo, b in ((f"log(1+step)", np.log1p(steps), None),
                                     (series_label(*s), xv, np.log1p(steps)[:, None])):
                        if o == "log(1+step)" and any(r.get("observable") == o and r["performance"] == series_label(*p)
                                                      and r["size_level"] == lev and r["family"] == fam for r in rows):
                            continue
                        row = {"family": fam, "level": "step", "size_level": lev, "observable": o,
                               "performance": series_label(*p), "baseline": "log(1+step)",
                               **relate(xo, yv, b, None, n_perm=n_perm, n_boot=n_boot, seed=seed)}
                        row["is_baseline"] = o == "log(1+step)"
                        rows.append(row)
        verdicts.append((fam, n_steps_seen, "log(1+step)"))
    return _finish(name, rows, "step", min_steps, verdicts, extra_footer=[
        "points: aligned steps; performance averaged over the sizes that all have it at that step (and per size)",
        "p: permutation over steps (exact for n <= 8); gain: leave-one-step-out R² over log(1+step)"])


# ---- tables and verdicts ----------------------------------------------------------------------------


def _empty(name: str, why: str) -> Table:
    t = Table(name, pd.DataFrame(columns=COLUMNS), pd.DataFrame(), note=why)
    t.footer = [f"verdict: no verdict: {why}"]
    return t


def _finish(name: str, rows: list[dict], level: str, min_points: int, verdicts, extra_footer: list[str]) -> Table:
    data = pd.DataFrame(rows)
    if data.empty:
        return _empty(name, f"fewer than 3 points with both an observable and a performance measure at {level} level")
    for c in COLUMNS + ["note", "is_baseline", "size_level"]:
        if c not in data:
            data[c] = np.nan
    test_p = data["partial_p"].where(~data["is_baseline"].astype(bool))
    data["q_bh"] = S.bh(test_p.to_numpy(float))
    sort = ["family", "performance"] + (["size_level"] if level == "step" else [])
    data["_b"] = ~data["is_baseline"].astype(bool)
    data = data.sort_values(sort + ["_b", "q_bh", "observable"], kind="mergesort", na_position="last").drop(
        columns="_b").reset_index(drop=True)
    keep = COLUMNS + (["size_level"] if level == "step" else []) + ["note", "is_baseline"]
    data = data[keep]
    disp = pd.DataFrame({"family": data["family"]})
    if level == "step":
        disp["sizes"] = data["size_level"]
    disp["observable"] = data["observable"]
    disp["performance"] = data["performance"]
    disp["n"] = data["n"].astype(int)
    disp["spearman (p)"] = [_rp(r, p) for r, p in zip(data["spearman"], data["spearman_p"])]
    disp["partial r | baseline [95%]"] = [
        "(baseline)" if b else _ci(r, lo, hi) for r, lo, hi, b in zip(data["partial_r"], data["partial_lo"],
                                                                      data["partial_hi"], data["is_baseline"])]
    disp["oos gain [95%]"] = ["" if b else _ci(g, lo, hi, signed=True) for g, lo, hi, b in
                              zip(data["gain"], data["gain_lo"], data["gain_hi"], data["is_baseline"])]
    if level == "model":
        disp["sign stable"] = ["" if not (a == a and n == n and n) else f"{int(a)}/{int(n)}"
                               for a, n in zip(data["sign_agree"], data["sign_n"])]
    disp["BH q"] = [_p(q) for q in data["q_bh"]]
    if data["note"].notna().any():
        disp["note"] = data["note"].fillna("")
    lines = [verdict(data, level, fam, n_pts, base, min_points) for fam, n_pts, base in verdicts]
    footer = [f"verdict: {v}" for v in lines] + extra_footer + [
        f"BH over {int(np.isfinite(data['q_bh']).sum())} tests; a row beats its baseline when q <= {ALPHA} "
        "and its out-of-sample gain is positive"]
    return Table(name, data, disp, footer)


def verdict(data: pd.DataFrame, level: str, family: str, n_points: int, baseline: str,
            min_points: int, q_col: str = "q_bh") -> str:
    """One line of plain words for one family's part of a relation table: the best row that
    beats its baseline (q <= ALPHA, positive out-of-sample gain, and at model level a sign that
    survives leaving any one run out), else that none does; never a verdict from too few points."""
    unit = {"model": "runs", "step": "aligned steps", "checkpoint": "checkpoints"}[level]
    where = f"{family}: " if family else ""
    if n_points < min_points:
        return (f"{where}no verdict at {level} level: needs >= {min_points} {unit}, has {n_points} "
                f"({min_points - n_points} missing)")
    d = data[(data["family"] == family) & ~data["is_baseline"].astype(bool)]
    tested = int(d[q_col].notna().sum())
    win = d[(d[q_col] <= ALPHA) & (d["gain"] > 0)]
    if level == "model":
        win = win[(win["sign_agree"] == win["sign_n"])]
    perfs = sorted(set(d["performance"]))
    if win.empty:
        what = perfs[0] if len(perfs) == 1 else f"any of {len(perfs)} performance measures"
        return f"{where}no observable beats {baseline} for {what} ({tested} tested)"
    best = win.sort_values([q_col, "partial_r"], key=lambda c: c if c.name == q_col else -c.abs()).iloc[0]
    more = len(win) - 1
    return (f"{where}{best['observable']} relates to {best['performance']} beyond {baseline}: partial r = "
            f"{_ci(best['partial_r'], best['partial_lo'], best['partial_hi'])}, q = {_p(best[q_col])}, "
            f"out-of-sample gain {best['gain']:+.2f}" + (f" (and {more} more rows)" if more else ""))


def verdict_table(tables: Sequence[Table]) -> Table:
    """The verdict lines of the relation tables (their footers' ``verdict:`` lines), one row each."""
    rows = []
    for t in tables:
        level = t.name.replace("relation_", "")
        for line in t.footer:
            if line.startswith("verdict: "):
                rows.append({"level": level, "verdict": line[len("verdict: "):]})
    data = pd.DataFrame(rows, columns=["level", "verdict"])
    return Table("verdicts", data, data.copy(), note=None if rows else "no relation table")


def _rp(r, p) -> str:
    if not (isinstance(r, float) and math.isfinite(r)):
        return ""
    return f"{r:+.2f} ({_p(p)})" if isinstance(p, float) and math.isfinite(p) else f"{r:+.2f}"


def _ci(r, lo, hi, signed: bool = False) -> str:
    if not (isinstance(r, float) and math.isfinite(r)):
        return ""
    s = f"{r:+.2f}"
    if isinstance(lo, float) and math.isfinite(lo):
        s += f" [{lo:+.2f}, {hi:+.2f}]"
    return s


def _p(p) -> str:
    if not (isinstance(p, float) and math.isfinite(p)):
        return ""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


__all__ = ["model_points", "model_relation", "relate", "size_number", "step_relation", "verdict", "fmt_value"]
