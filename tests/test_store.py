"""The result store: crash-safe appends, finished units, atomic Parquet, resume semantics."""

from __future__ import annotations

import json

import pandas as pd

from harness import store
from harness.records import RECORD_COLUMNS, normalise


def _row(unit: str, measure: str, n: int, started: str = "t0", status: str = "ok", value: float = 1.0):
    return normalise({"unit_id": unit, "unit_n": n, "family": "f", "model_id": "m", "step": 1, "metric": "x",
                      "scope": "checkpoint", "measure": measure, "value": value, "status": status,
                      "started_at": started})


def test_record_id_is_deterministic_and_identity_based():
    a, b = _row("u", "loss", 1), _row("u", "loss", 1, value=2.0)
    assert a["record_id"] == b["record_id"]  # the value is not identity
    assert a["record_id"] != _row("u", "acc", 1)["record_id"]
    assert list(a) == list(RECORD_COLUMNS)


def test_partial_tail_is_cut_and_incomplete_units_ignored(tmp_path):
    path = tmp_path / "records-x.jsonl"
    with store.RecordWriter(path) as w:
        w.write_unit([_row("u1", "a", 2), _row("u1", "b", 2)])
    # a killed writer: half a unit, the last line torn mid-way
    with open(path, "a") as fh:
        fh.write(json.dumps(_row("u2", "a", 2)) + "\n" + json.dumps(_row("u2", "b", 2))[:30])
    rows = store.load_rows(tmp_path)
    assert {r["unit_id"] for r in rows} == {"u1"}
    with store.RecordWriter(path) as w:  # reopening cuts the torn line
        w.write_unit([_row("u2", "a", 2, started="t1"), _row("u2", "b", 2, started="t1")])
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    rows = store.load_rows(tmp_path)
    assert sorted((r["unit_id"], r["measure"]) for r in rows) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]


def test_latest_complete_attempt_wins(tmp_path):
    with store.RecordWriter(tmp_path / "records-a.jsonl") as w:
        w.write_unit([_row("u", "*", 1, started="t0", status="error", value=None)])
        w.write_unit([_row("u", "a", 2, started="t1"), _row("u", "b", 2, started="t1")])
    rows = store.load_rows(tmp_path)
    assert sorted(r["measure"] for r in rows) == ["a", "b"]


def test_consolidate_is_atomic_and_loadable(tmp_path):
    with store.RecordWriter(tmp_path / "records-a.jsonl") as w:
        w.write_unit([_row("u1", "a", 1)])
    path = store.consolidate(tmp_path)
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))
    frame = pd.read_parquet(path)
    assert len(frame) == 1 and frame.loc[0, "measure"] == "a"
    assert len(store.load_results(tmp_path)) == 1


def test_unwritable_root_fails_early(tmp_path):
    import pytest

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the results root should be")
    with pytest.raises(store.StoreError, match="not writable"):
        store.check_writable(blocker / "run")
