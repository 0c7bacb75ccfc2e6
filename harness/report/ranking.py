"""The ranking leaderboard: one row per model (training run), ranked by a performance measure.

    >>> boards = rankings(frame)                  # one Table per family (+ a combined one)
    >>> lb = leaderboard(frame, at="final")       # the first of them
    >>> lb.display.columns[:4].tolist()
    ['rank', 'model', 'size', 'step']

A *model* is one training run (``family`` x ``model_id``: size x seed/config). Each row sits at
one step of its run: ``at="final"`` (the run's last step with the ranking measure),
``"step=N"`` (exactly step N; a run without it is listed unranked with the reason) or
``"best"`` (the step where the ranking measure is best). Columns, in order: rank (ties share the
lower rank: 1, 2, 2, 4), a short distinct model label, size, the step, the performance measures
(``value ± stderr`` with ↑/↓; the ranking one first), then the run-level observables: trajectory
metrics (one value per run), suite results at the run's size and last aligned step, and the
per-checkpoint observables at the row's step. A value the metric flagged (e.g. a fit it says is
no power law) is shown as ``flagged [k]``, never as a number; footnote ``[k]`` in the footer gives
the model and the reason once, however many of its columns are flagged.

The ranking measure: ``rank_by`` (a selector ``metric:measure[:task]``) or, by default, the
first performance measure the records declare (``primary`` > ``score`` > ``loss``; see
`harness.report.tables.performance_series`). The core names no metric.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.report.tables import (
    ARROWS,
    SERIES_KEYS,
    Table,
    fmt_value,
    matches,
    performance_series,
    provenance_footer,
    series_label,
)

#: a record's ``warning`` that starts with this marks its value as flagged by its metric
FLAGGED = "flagged"


def is_flagged(warning) -> bool:
    """True when a record's warning says its metric flagged the value (``flagged: ...``)."""
    return isinstance(warning, str) and warning.lower().startswith(FLAGGED)


def parse_at(at: str) -> tuple[str, int | None]:
    """``final`` | ``best`` | ``step=N`` -> (mode, N)."""
    at = str(at).strip()
    if at in ("final", "best"):
        return at, None
    m = re.fullmatch(r"step\s*=\s*(\d+)", at)
    if m:
        return "step", int(m[1])
    raise ValueError(f"at={at!r}: use final, best or step=N")


def short_labels(model_ids: Sequence[str]) -> dict[str, str]:
    """Short, distinct labels: the common path prefix and the common ``,key=value`` suffix of
    the ids removed (``toy_softmax/T=0.1,seed=0`` -> ``T=0.1``); ids stay whole if that would
    make two labels equal or empty."""
    ids = [str(m) for m in dict.fromkeys(model_ids)]
    if len(ids) < 2:
        return {m: m.rsplit("/", 1)[-1] or m for m in ids}
    prefix = os.path.commonprefix(ids)
    cut = max(prefix.rfind(c) for c in "/,-_") + 1 if not all(m == prefix for m in ids) else 0
    rest = [m[cut:] for m in ids]
    suffix = os.path.commonprefix([r[::-1] for r in rest])[::-1]
    suffix = suffix[suffix.find(","):] if "," in suffix else ""
    out = {m: (r[: len(r) - len(suffix)] if suffix else r) for m, r in zip(ids, rest)}
    if len(set(out.values())) < len(ids) or any(not v for v in out.values()):
        return {m: m for m in ids}
    return out


def _run_level(frame: pd.DataFrame) -> pd.DataFrame:
    """ok model-level records (no layer) with a model_id, task filled."""
    if frame.empty:
        return frame
    f = frame[(frame["status"] == "ok") & frame["layer"].isna() & frame["model_id"].notna()
              & (frame["step"].notna() | frame["scope"].isin(["trajectory", "suite"]))].copy()
    f["task"] = f["task"].fillna("")
    f["_flag"] = f["warning"].map(is_flagged) if "warning" in f else False
    return f[f["value"].notna() | f["_flag"]]


def _hib(f: pd.DataFrame, s: tuple[str, str, str]):
    g = f[(f["metric"] == s[0]) & (f["measure"] == s[1]) & (f["task"] == s[2])]["higher_is_better"].dropna()
    return None if g.empty else bool(g.iloc[-1])


def _label(f: pd.DataFrame, s: tuple[str, str, str], suffix: str = "") -> str:
    h = _hib(f, s)
    return f"{series_label(*s)}{suffix} {ARROWS[h] if h is not None else ''}".strip()


def rankings(frame: pd.DataFrame, *, rank_by: str | None = None, at: str = "final",
             performance: Sequence[str] | None = None, max_observables: int = 12,
             max_performance: int = 8) -> list[Table]:
    """One ranking per family; plus a combined one over families that share the ranking measure."""
    f = _run_level(frame)
    footer = provenance_footer(frame)
    if f.empty:
        return [Table("leaderboard", pd.DataFrame(), pd.DataFrame(), footer,
                      note="no ok model-level records at a checkpoint or of a run" + (
                          "" if not frame.empty else " (no records)"))]
    families = sorted(f["family"].dropna().unique())
    tables = []
    for fam in families:
        name = "leaderboard" if len(families) == 1 else f"leaderboard_{fam}"
        tables.append(_ranking(f[f["family"] == fam], name, footer, rank_by=rank_by, at=at,
                               performance=performance, max_observables=max_observables,
                               max_performance=max_performance))
    if len(families) > 1:
        perf = [tables[i].data.attrs.get("rank_by") for i in range(len(tables))]
        shared = [p for p in dict.fromkeys(perf) if p is not None and perf.count(p) > 1]
        if shared:
            key = shared[0]
            fams = [fam for fam, p in zip(families, perf) if p == key]
            sub = f[f["family"].isin(fams)]
            tables.append(_ranking(sub, "leaderboard_combined", footer, rank_by=":".join(key), at=at,
                                   performance=performance, max_observables=max_observables,
                                   max_performance=max_performance, combined=True))
    return tables


def leaderboard(frame: pd.DataFrame, *, rank_by: str | None = None, at: str = "final",
                performance: Sequence[str] | None = None, max_observables: int = 12) -> Table:
    """The ranking of the first family (see `rankings` for several families)."""
    return rankings(frame, rank_by=rank_by, at=at, performance=performance, max_observables=max_observables)[0]


def _ranking(f: pd.DataFrame, name: str, footer: list[str], *, rank_by, at, performance, max_observables,
             max_performance: int = 8, combined: bool = False) -> Table:
    mode, at_step = parse_at(at)
    perf = performance_series(f, performance)
    if rank_by:
        chosen = [s for s in perf if matches(*s, patterns=[rank_by])] or [
            s for s in dict.fromkeys(zip(f["metric"], f["measure"], f["task"])) if matches(*s, patterns=[rank_by])]
        if not chosen:
            return Table(name, pd.DataFrame(), pd.DataFrame(), footer,
                         note=f"rank_by={rank_by!r} matches no series in these records")
        key = chosen[0]
        perf = [key] + [s for s in perf if s != key]
    elif perf:
        key = perf[0]
    else:
        key = None
    ckpt = f[f["step"].notna() & (f["scope"].isin(["checkpoint", "pair"]))]
    runs = f[["family", "model_id"]].drop_duplicates()
    runs = runs[~runs["model_id"].astype(str).str.endswith(":suite")]
    # the step each run's row sits at
    rows = []
    for fam, mid in runs.itertuples(index=False):
        g = ckpt[(ckpt["family"] == fam) & (ckpt["model_id"] == mid)]
        row = {"family": fam, "model_id": mid, "size": None, "n_params": np.nan, "step": None, "why": None}
        allrec = f[(f["family"] == fam) & (f["model_id"] == mid)]
        row["size"] = allrec["size"].dropna().iloc[-1] if allrec["size"].notna().any() else ""
        row["n_params"] = allrec["n_params"].max()
        if key is not None:
            gk = g[(g["metric"] == key[0]) & (g["measure"] == key[1]) & (g["task"] == key[2]) & ~g["_flag"]]
        else:
            gk = g
        if mode == "final":
            row["step"] = int(gk["step"].max()) if not gk.empty else (int(g["step"].max()) if not g.empty else None)
        elif mode == "step":
            row["step"] = at_step if (gk["step"] == at_step).any() else None
            if row["step"] is None:
                row["why"] = f"no {series_label(*key) if key else 'record'} at step {at_step}"
        else:  # best
            if key is None or gk.empty:
                row["why"] = "no ranking measure"
            else:
                hib = _hib(f, key)
                gk = gk.sort_values("step", kind="mergesort")
                idx = gk["value"].idxmax() if hib is not False else gk["value"].idxmin()
                row["step"] = int(gk.loc[idx, "step"])
        rows.append(row)
    if not rows:
        return Table(name, pd.DataFrame(), pd.DataFrame(), footer, note="no training run among the records")
    R = pd.DataFrame(rows)

    cols = ["family", "model_id", "metric", "measure", "task", "step", "size", "value", "stderr", "warning", "_flag"]
    index: dict[tuple, dict] = {}
    for rec in ckpt[cols].to_dict("records"):  # the last record of a key wins (a re-run supersedes)
        index[(rec["family"], rec["model_id"], rec["metric"], rec["measure"], rec["task"], rec["step"])] = rec

    def value_at(fam, mid, s, step):
        return index.get((fam, mid, *s, step))

    # run-level observables: trajectory records (one per run), suite records at the run's size and
    # last aligned step, then per-checkpoint observables (not performance) at the row's step
    perf_set = set(perf)
    traj = f[f["scope"] == "trajectory"]
    suite = f[(f["scope"] == "suite") & f["size"].notna()]
    obs_traj = [s for s in dict.fromkeys(zip(traj["metric"], traj["measure"], traj["task"])) if s not in perf_set]
    obs_suite = [s for s in dict.fromkeys(zip(suite["metric"], suite["measure"], suite["task"])) if s not in perf_set]
    obs_ckpt = [s for s in dict.fromkeys(zip(ckpt["metric"], ckpt["measure"], ckpt["task"])) if s not in perf_set]
    obs_traj, obs_suite, obs_ckpt = sorted(obs_traj), sorted(obs_suite), sorted(obs_ckpt)
    observables = [("trajectory", s) for s in obs_traj] + [("suite", s) for s in obs_suite] + [
        ("checkpoint", s) for s in obs_ckpt]
    if len(perf) > max_performance:
        note_parts_perf = [f"showing {max_performance} of {len(perf)} performance measures (the rest in the "
                           "trajectories table and the files)"]
        perf = perf[:max_performance]
    else:
        note_parts_perf = []
    last_traj: dict[tuple, dict] = {}
    for rec in traj.sort_values("step", kind="mergesort", na_position="first")[cols].to_dict("records"):
        last_traj[(rec["family"], rec["model_id"], rec["metric"], rec["measure"], rec["task"])] = rec
    last_suite: dict[tuple, dict] = {}
    for rec in suite.sort_values("step", kind="mergesort", na_position="first")[cols].to_dict("records"):
        last_suite[(rec["family"], rec["size"], rec["metric"], rec["measure"], rec["task"])] = rec
    note_parts = note_parts_perf
    if len(observables) > max_observables:
        note_parts.append(f"showing {max_observables} of {len(observables)} observables (the rest in the "
                          "trajectories table and the files)")
        observables = observables[:max_observables]

    if combined:  # short within each family, then the family in front
        labels = {}
        for fam, g in R.groupby("family", sort=True):
            labels.update({m: f"{fam}:{lab}" for m, lab in short_labels(g["model_id"].astype(str).tolist()).items()})
    else:
        labels = short_labels(R["model_id"].astype(str).tolist())
    data = pd.DataFrame({"family": R["family"], "model_id": R["model_id"],
                         "model": [labels[str(m)] for m in R["model_id"]], "size": R["size"].fillna(""),
                         "n_params": R["n_params"], "step": R["step"].astype("Int64")})
    disp = pd.DataFrame({"model": data["model"], "size": data["size"].astype(str),
                         "step": [("" if pd.isna(s) else str(int(s))) for s in data["step"]]})
    if combined:
        disp.insert(0, "family", data["family"].to_numpy())

    notes: dict[tuple[str, str], int] = {}  # (model label, reason) -> footnote number: each reason said once

    def put(col: str, values, errs, flags, header: str):
        data[col] = values
        if any(e is not None and np.isfinite(e) for e in errs):
            data[col + " stderr"] = [np.nan if e is None else e for e in errs]
        cells = []
        for mid, v, e, fl in zip(R["model_id"], values, errs, flags):
            if fl:
                k = notes.setdefault((labels[str(mid)], _reason(fl)), len(notes) + 1)
                cells.append(f"flagged [{k}]")
            else:
                cells.append(fmt_value(v, e if e is not None and np.isfinite(e) else None))
        disp[header] = cells

    for s in perf:
        vals, errs, flags = [], [], []
        for fam, mid, step in zip(R["family"], R["model_id"], R["step"]):
            rec = value_at(fam, mid, s, step) if step is not None and not pd.isna(step) else None
            _cell(rec, vals, errs, flags)
        put(series_label(*s), vals, errs, flags, _label(f, s))
    for where, s in observables:
        vals, errs, flags = [], [], []
        for fam, mid, size, step in zip(R["family"], R["model_id"], R["size"], R["step"]):
            if where == "trajectory":
                rec = last_traj.get((fam, mid, *s))
            elif where == "suite":
                rec = last_suite.get((fam, size, *s))
            else:
                rec = value_at(fam, mid, s, step) if step is not None and not pd.isna(step) else None
            _cell(rec, vals, errs, flags)
        suffix = " (final aligned step)" if where == "suite" else ""
        put(series_label(*s) + suffix, vals, errs, flags, _label(f, s, suffix))

    # rank
    if key is not None:
        v = data[series_label(*key)].to_numpy(float)
        hib = _hib(f, key)
        from scipy.stats import rankdata

        ok = np.isfinite(v)
        score = -v if hib is not False else v  # unknown direction: higher first, said in the footer
        rank = np.full(len(v), np.nan)
        rank[ok] = rankdata(score[ok], method="min")
        data.insert(0, "rank", pd.array([None if not np.isfinite(r) else int(r) for r in rank], dtype="Int64"))
        disp.insert(0, "rank", ["" if not np.isfinite(r) else str(int(r)) for r in rank])
        order = np.lexsort((data["model"].astype(str).to_numpy(), np.where(ok, rank, np.inf)))
        data, disp = data.iloc[order].reset_index(drop=True), disp.iloc[order].reset_index(drop=True)
        R = R.iloc[order].reset_index(drop=True)
        why = (f"ranked by {series_label(*key)} ({'higher' if hib is not False else 'lower'} is better"
               f"{'; direction unknown, higher first' if hib is None else ''}) at {at}")
        data.attrs["rank_by"] = key
        unranked = int((~ok).sum())
        if unranked:
            reasons = sorted({w for w in R["why"].dropna()})
            note_parts.append(f"{unranked} model(s) unranked: " + ("; ".join(reasons) if reasons else
                                                                  f"no {series_label(*key)} at their step"))
    else:
        why = ("no performance measure declared in these records: models listed unranked "
               "(run a metric that declares one, or choose rank_by=metric:measure[:task])")
        data.insert(0, "rank", pd.array([None] * len(data), dtype="Int64"))
        disp.insert(0, "rank", [""] * len(disp))
    flag_lines = [f"[{k}] {model}: flagged by its metric, not a result: {reason}"
                  for (model, reason), k in sorted(notes.items(), key=lambda kv: kv[1])]
    return Table(name, data, disp, [why] + flag_lines + footer, note="; ".join(note_parts) or None)


def _reason(warning: str) -> str:
    """The reason of a ``flagged: ...`` warning (the marker cut; other warnings after ';' dropped)."""
    r = str(warning)
    r = r.split(":", 1)[1].strip() if r.lower().startswith(FLAGGED) and ":" in r else r
    return r.split("; ")[0]


def _cell(rec, vals: list, errs: list, flags: list) -> None:
    if rec is None:
        vals.append(np.nan)
        errs.append(None)
        flags.append(None)
        return
    flagged = bool(rec["_flag"])
    vals.append(np.nan if flagged or rec["value"] is None else float(rec["value"]))
    se = rec.get("stderr")
    errs.append(None if se is None or (isinstance(se, float) and math.isnan(se)) else float(se))
    flags.append(rec["warning"] if flagged else None)


__all__ = ["FLAGGED", "is_flagged", "leaderboard", "parse_at", "rankings", "short_labels", "SERIES_KEYS"]
