"""compare: an identical rerun passes, an injected 10% regression fails, config changes are
flagged not comparable, one-sided rows are reported; the CLI exit codes follow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.report.compare import compare, parse_fail_if, regressions, summary
from harness.store import RecordWriter
from test_report_tables import make_frame


def _write_run(frame, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = json.loads(frame.to_json(orient="records"))
    with RecordWriter(root / "records.jsonl") as w:
        w.write_unit(rows)
    return root


def test_identical_rerun_passes():
    a, b = make_frame(run_id="a"), make_frame(run_id="b")  # same seed: same numbers, other run
    t = compare(a, b)
    assert (t["status"] == "same").all() and len(t) == len(a)
    assert regressions(t, parse_fail_if(["value:5%"])).empty


def test_injected_10pct_regression_is_flagged_with_z():
    a, b = make_frame(run_id="a"), make_frame(run_id="b")
    hit = (b.measure == "acc") & (b.step == 4000)
    b.loc[hit, "value"] *= 0.9  # acc is higher-is-better: 10% worse
    loss_hit = (b.measure == "loss") & (b.step == 16)
    b.loc[loss_hit, "value"] *= 0.9  # loss is lower-is-better: 10% BETTER, not a regression
    t = compare(a, b)
    bad = regressions(t, parse_fail_if(["value:5%"]))
    assert len(bad) == hit.sum() == 3
    assert set(bad["measure"]) == {"acc"} and set(bad["step"]) == {4000}
    assert np.allclose(bad["rel_delta"], -0.1)
    r = bad.iloc[0]
    va = a[(a.measure == "acc") & (a.step == 4000) & (a.model_id == r.model_id)].value.iloc[0]
    assert r.z == pytest.approx((0.9 * va - va) / np.sqrt(2 * 0.02**2))
    assert r.p == pytest.approx(2 * stats.norm.sf(abs(r.z)))
    assert regressions(t, parse_fail_if(["value:15%"])).empty  # under the threshold
    assert len(regressions(t, parse_fail_if(["value:0.001"]))) == 3  # absolute rule


def test_not_comparable_and_one_sided_rows():
    a, b = make_frame(run_id="a"), make_frame(run_id="b")
    b.loc[(b.measure == "loss") & (b.step == 0), "metric_config_hash"] = "mc2"
    b.loc[(b.measure == "acc") & (b.step == 16), "versions"] = json.dumps({"torch": "2.9", "harness": "0.1"})
    b.loc[(b.measure == "tracks") & (b.step == 128), "versions"] = json.dumps({"torch": "2.1", "harness": "9"})
    b = b[~((b.measure == "loss") & (b.step == 64000))]
    extra = b[(b.measure == "acc") & (b.step == 0)].assign(task="other_task")
    import pandas as pd

    t = compare(a, pd.concat([b, extra], ignore_index=True))
    nc = t[t.status == "not_comparable"]
    assert len(nc) == 6
    assert nc.reason.str.contains("metric_config_hash mc1 != mc2").sum() == 3
    assert nc.reason.str.contains("torch 2.1 -> 2.9").sum() == 3
    assert (t.status == "only_a").sum() == 3 and (t.status == "only_b").sum() == 3
    # a harness-version change alone does not make numbers incomparable
    assert (t[(t.measure == "tracks") & (t.step == 128)].status.isin(["same"])).all()
    assert "not_comparable 6" in summary(t)


def test_ok_to_error_counts_as_regression():
    a, b = make_frame(run_id="a"), make_frame(run_id="b")
    sel = (b.measure == "acc") & (b.step == 0) & (b.model_id == "toy-70m")
    b.loc[sel, ["status", "value"]] = ["error", None]
    t = compare(a, b)
    assert len(regressions(t, parse_fail_if(["value:5%"]))) == 1


@pytest.mark.parametrize("spec", ["value", "value:", "loss:5%", "value:abc%", "value:5%%"])
def test_bad_fail_if(spec):
    with pytest.raises(ValueError, match="--fail-if"):
        parse_fail_if([spec])


def test_cli_exit_codes(tmp_path, capsys):
    from harness.report.cli import main

    a = _write_run(make_frame(run_id="a"), tmp_path / "a")
    same = _write_run(make_frame(run_id="b"), tmp_path / "b")
    worse = make_frame(run_id="c")
    worse.loc[worse.measure == "acc", "value"] *= 0.9
    c = _write_run(worse, tmp_path / "c")
    assert main(["compare", str(a), str(same), "--fail-if", "value:5%"]) == 0
    assert main(["compare", str(a), str(c), "--fail-if", "value:5%", "--format", "csv",
                 "--out", str(tmp_path / "cmp.csv")]) == 1
    err = capsys.readouterr().err
    assert "REGRESSION: 24 record(s)" in err
    assert (tmp_path / "cmp.csv").read_text().count("\n") == 97 + 1  # header + every record (96 ok + 1 skipped)
    assert main(["compare", str(a), str(c)]) == 0  # no rule: report only
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
