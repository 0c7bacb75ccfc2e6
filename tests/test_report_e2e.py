"""End to end through `python -m harness`: the runner writes the report; `harness report` and
`harness compare` read the run; lm_eval on the toy family is a documented skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _run(results: Path, name: str, max_step: int = 1) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harness", "model=toy_softmax", "metric=[loss,lm_eval]",
           f"checkpoints.max_step={max_step}", f"results_dir={results}", f"run_name={name}",
           "print_config=false", "progress=off"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results / name


@pytest.mark.slow  # a Hydra subprocess that trains the toy family: ~15 s idle, ~45 s on the shared CI box
def test_run_report_compare_end_to_end(tmp_path, capsys):
    run = _run(tmp_path, "a")
    report = run / "report"
    assert (report / "report.html").exists() and (report / "leaderboard.md").exists()
    status = (report / "status.md").read_text()
    assert "checkpoint has no tokenizer" in status  # lm_eval skips the toy family, with the reason
    lb = (report / "leaderboard.md").read_text()
    assert "loss.loss ↓" in lb and "±" in lb
    # the CLI on the stored run
    assert main(["report", str(run), "--format", "md", "--out", str(tmp_path / "out"), "--n-boot", "20",
                 "--n-perm", "20"]) == 0
    assert (tmp_path / "out/leaderboard.md").read_text() == lb
    # a copy is an identical rerun; then inject a 10% loss regression into the copy
    b = tmp_path / "b"
    shutil.copytree(run, b)
    assert main(["compare", str(run), str(b), "--fail-if", "value:5%"]) == 0
    import pandas as pd

    from harness.store import write_parquet

    stored = sorted(b.rglob("records*.jsonl")) + sorted(b.rglob("records.parquet"))
    assert stored
    for path in stored:  # the store keeps JSONL, Parquet or both: change every copy
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            for r in rows:
                if r["measure"] == "loss" and r["status"] == "ok":
                    r["value"] *= 1.10  # loss is lower-is-better
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            f = pd.read_parquet(path)
            sel = (f["measure"] == "loss") & (f["status"] == "ok")
            f.loc[sel, "value"] = f.loc[sel, "value"] * 1.10
            write_parquet(f, path)
    assert main(["compare", str(run), str(b), "--fail-if", "value:5%"]) == 1
    assert "REGRESSION" in capsys.readouterr().err


@pytest.mark.slow
def test_two_real_runs_compare_equal(tmp_path):
    """Two independent runs of the seeded toy family are identical record for record."""
    a, b = _run(tmp_path, "a", 3), _run(tmp_path, "b", 3)
    assert main(["compare", str(a), str(b), "--fail-if", "value:0%"]) == 0
