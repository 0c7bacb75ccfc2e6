"""Compare two runs record by record: ``harness compare RUN_A RUN_B [--fail-if value:5%]``.

    >>> table = compare(load_results("results/a"), load_results("results/b"))
    >>> bad = regressions(table, parse_fail_if(["value:5%"]))

Rows are joined on record identity *without* the config hashes (family, model_id, step,
pair_step, metric, scope, measure, task, layer, seed), so a changed setting shows up as a row
that is ``not_comparable`` (with the reason) instead of two unrelated one-sided rows. A row is
not comparable when metric_config_hash, model_config_hash, metric_version, data_fingerprint or
a tracked package version (other than harness itself) differ. A is the baseline: delta = B - A.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

logger = logging.getLogger(__name__)

JOIN_KEYS = ["family", "model_id", "step", "pair_step", "metric", "scope", "measure", "task", "layer", "seed"]
COMPARABILITY = ["metric_config_hash", "model_config_hash", "metric_version", "data_fingerprint"]
#: versions that do not change numbers (the harness version moves with every commit)
IGNORED_VERSION_KEYS = frozenset({"harness"})


@dataclass(frozen=True)
class FailRule:
    """``value:5%`` (relative) or ``value:0.01`` (absolute): fail when B is worse than A by more."""

    field: str
    threshold: float
    relative: bool

    def __str__(self) -> str:
        return f"{self.field}:{self.threshold * 100:g}%" if self.relative else f"{self.field}:{self.threshold:g}"


def parse_fail_if(specs: Sequence[str]) -> list[FailRule]:
    """``value:5%`` / ``value:0.01`` -> the rules ``--fail-if`` checks."""
    rules = []
    for spec in specs:
        m = re.fullmatch(r"\s*(value)\s*:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(%?)\s*", spec or "")
        if not m:
            raise ValueError(f"--fail-if {spec!r}: expected value:<number>% (relative) or value:<number> (absolute)")
        thr = float(m.group(2))
        rules.append(FailRule(m.group(1), thr / 100 if m.group(3) else thr, bool(m.group(3))))
    return rules


def _versions(v) -> dict:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return {}
    if isinstance(v, dict):
        d = v
    else:
        try:
            d = json.loads(v)
        except (TypeError, ValueError):
            return {}
    return {k: val for k, val in d.items() if k not in IGNORED_VERSION_KEYS}


NUMERIC_KEYS = ("step", "pair_step", "seed")


def _key_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Index each record by a string of its join keys (NA -> "", integers without ".0", so
    JSONL and Parquet copies of one run agree); the last of duplicates wins. Vectorised."""
    f = frame.copy()
    key = None
    for c in JOIN_KEYS:
        if c not in f:
            f[c] = None
        if c in NUMERIC_KEYS:
            num = pd.to_numeric(f[c], errors="coerce").astype("Int64")
            col = num.astype(str).where(num.notna(), "")
        else:
            col = f[c].astype(object).where(f[c].notna(), "").astype(str)
        col = col.fillna("")  # pandas 3 keeps NA through astype(str)
        key = col if key is None else key + "\x1f" + col
    f["_key"] = key.to_numpy() if key is not None else ""
    return f.drop_duplicates("_key", keep="last").set_index("_key")


def _same(a, b) -> bool:
    na = a is None or (isinstance(a, float) and math.isnan(a))
    nb = b is None or (isinstance(b, float) and math.isnan(b))
    return (na and nb) or (not na and not nb and a == b)


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per record identity in A or B with value_a, value_b, delta, rel_delta, z, p, status.

    status: ``same`` | ``changed`` | ``only_a`` | ``only_b`` | ``not_comparable`` | ``status_changed``
    (ok on one side, skipped/error on the other); ``reason`` says why. Vectorised (an outer
    merge), so comparing runs of 10^5 records takes seconds.
    """
    keep = ["value", "stderr", "status", "higher_is_better", "versions", *COMPARABILITY]
    fa, fb = _key_frame(a), _key_frame(b)
    for f in (fa, fb):
        for c in keep:
            if c not in f:
                f[c] = None
    m = fa[JOIN_KEYS + keep].join(fb[JOIN_KEYS + keep], how="outer", lsuffix="_a", rsuffix="_b", sort=True)
    in_a, in_b = m["status_a"].notna().to_numpy(), m["status_b"].notna().to_numpy()
    out = pd.DataFrame(index=m.index)
    for c in JOIN_KEYS:
        out[c] = m[c + "_a"].where(in_a, m[c + "_b"])
    hib_b, hib_a = m["higher_is_better_b"], m["higher_is_better_a"]
    out["higher_is_better"] = hib_b.where(hib_b.notna(), hib_a)
    va, vb = m["value_a"].astype(float), m["value_b"].astype(float)
    out["value_a"], out["value_b"] = va, vb
    out["delta"] = vb - va
    with np.errstate(divide="ignore", invalid="ignore"):
        out["rel_delta"] = np.where((va != 0) & np.isfinite(va), (vb - va) / va.abs(), np.nan)
        se = np.sqrt(m["stderr_a"].astype(float) ** 2 + m["stderr_b"].astype(float) ** 2)
        out["z"] = np.where(se > 0, (vb - va) / se, np.nan)
    out["p"] = 2 * stats.norm.sf(np.abs(out["z"]))
    out["status_a"], out["status_b"] = m["status_a"], m["status_b"]
    status = np.where(~in_a, "only_b", np.where(~in_b, "only_a", "")).astype(object)
    reasons = np.full(len(m), None, dtype=object)
    #: not comparable only because software versions differ (`regressions(allow_version_change=)`)
    version_only = np.ones(len(m), dtype=bool)
    both = np.flatnonzero(in_a & in_b)
    for c in COMPARABILITY:
        ca, cb = m[c + "_a"].to_numpy(object), m[c + "_b"].to_numpy(object)
        for i in both:
            if not _same(ca[i], cb[i]):
                reasons[i] = ((reasons[i] + "; ") if reasons[i] else "") + f"{c} {ca[i]} != {cb[i]}"
                version_only[i] &= c == "metric_version"
    ver_a, ver_b = m["versions_a"].to_numpy(object), m["versions_b"].to_numpy(object)
    for i in both:
        if ver_a[i] == ver_b[i]:
            continue
        da, db = _versions(ver_a[i]), _versions(ver_b[i])
        diff = sorted(p for p in set(da) | set(db) if da.get(p) != db.get(p))
        if diff:
            msg = "versions differ: " + ", ".join(f"{p} {da.get(p)} -> {db.get(p)}" for p in diff)
            reasons[i] = ((reasons[i] + "; ") if reasons[i] else "") + msg
    sa, sb = m["status_a"].to_numpy(object), m["status_b"].to_numpy(object)
    same_val = (va.to_numpy() == vb.to_numpy()) | (~np.isfinite(va.to_numpy()) & ~np.isfinite(vb.to_numpy()))
    for i in both:
        if reasons[i]:
            status[i] = "not_comparable"
        elif sa[i] != sb[i]:
            status[i] = "status_changed"
            reasons[i] = f"{sa[i]} -> {sb[i]}"
        else:
            status[i] = "same" if same_val[i] else "changed"
    out["status"], out["reason"] = status, reasons
    out["version_change_only"] = (status == "not_comparable") & version_only
    out["same_value"] = same_val
    return out.reset_index(drop=True)


def regressions(table: pd.DataFrame, rules: Sequence[FailRule], *, allow_version_change: bool = False) -> pd.DataFrame:
    """Rows where B is worse than A beyond any rule (direction from higher_is_better; two-sided
    when unknown), plus rows that were ok in A and are skipped/error in B, plus every row that
    could not be compared (``not_comparable``): a gate never passes on what it did not check.

    ``allow_version_change=True``: rows not comparable *only* because package or metric
    versions differ are compared on their values like any other row; rows whose configuration
    or data differ still fail.
    """
    if table.empty or not rules:
        return table.iloc[0:0]
    allowed = table.get("version_change_only", pd.Series(False, index=table.index)).astype(bool)
    allowed = allowed & allow_version_change
    comparable = table["status"].isin(["changed", "same"]) | allowed
    bad = np.zeros(len(table), bool)
    hib = table["higher_is_better"]
    for rule in rules:
        change = table["rel_delta"] if rule.relative else table["delta"]
        worse = np.where(hib == True, -change, np.where(hib == False, change, change.abs()))  # noqa: E712
        bad |= comparable.to_numpy() & (np.nan_to_num(worse.astype(float), nan=0.0) > rule.threshold)
    lost = (table["status"] == "status_changed") & (table["status_a"] == "ok")
    if allow_version_change:  # a row that also changed status is a lost result, versions or not
        sa, sb = table["status_a"], table["status_b"]
        lost |= allowed & (sa == "ok") & (sb != "ok")
    not_compared = (table["status"] == "not_comparable") & ~allowed
    return table[bad | lost.to_numpy() | not_compared.to_numpy()]


def not_compared(table: pd.DataFrame, *, allow_version_change: bool = False) -> pd.DataFrame:
    """Rows present in both runs whose values were not compared (see `regressions`)."""
    nc = table["status"] == "not_comparable"
    if allow_version_change and "version_change_only" in table:
        nc &= ~table["version_change_only"].astype(bool)
    return table[nc]


def summary(table: pd.DataFrame) -> str:
    """One line counting the comparison's rows by status."""
    counts = table["status"].value_counts()
    order = ["same", "changed", "status_changed", "not_comparable", "only_a", "only_b"]
    return ", ".join(f"{k} {int(counts.get(k, 0))}" for k in order)
