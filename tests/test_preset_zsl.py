"""Smoke tests of ``experiment=zsl_deceleration`` and ``experiment=pythia_mini_demo``: each runs
offline through ``python -m harness`` on a tiny pythia_mini suite (3 sizes x 40 steps, built in
the test's own cache) and must end with no error records, a claims row per declared claim with a
status and a reason, and a relation-table row for a training-dynamics observable.

The tiny suite is far too small for the papers' phenomena: these tests check that the presets work
end to end and that every claim is decided, not which verdict it gets (docs/presets.md has the
verdicts on the full mini suite).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.report.claims import STATUSES
from harness.store import load_results

from conftest import relation_observables, run_harness

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "conf" / "experiment"

#: a pythia_mini suite built in seconds: 3 sizes (the trend claims need >= 3), 40 steps
TINY_SUITE = ("model.mini.sizes=[xs,s,m]", "model.mini.steps=40", "model.mini.checkpoint_every=20",
              "+model.mini.seq_len=32", "+model.mini.batch_size=2", "+model.mini.vocab_size=300",
              "+model.mini.probe_batch_size=2", "+model.mini.data.name=pydoc", "+model.mini.data.max_docs=10",
              "data=pydoc", "data.max_docs=10", "data.seq_len=32", "data.batch_size=4", "data.n_batches=1")
SMOKE = {
    "zsl_deceleration": (TINY_SUITE, "interference"),
    "pythia_mini_demo": (TINY_SUITE + ("checkpoints.steps=[0,20,40]", "metric.lm_eval.limit=16"), "deceleration"),
}


@pytest.mark.parametrize("preset", sorted(SMOKE))
def test_zsl_and_demo_presets_smoke(preset, tmp_path):
    overrides, dynamics = SMOKE[preset]
    proc = run_harness(f"experiment={preset}", *overrides, f"results_dir={tmp_path}", "run_name=smoke",
                       f"cache_dir={tmp_path / 'cache'}", "progress=off", "print_config=false",
                       env={"OMP_NUM_THREADS": "1", "HARNESS_CACHE": str(tmp_path / "cache")}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "0 error records" in proc.stdout
    frame = load_results(tmp_path / "smoke")
    assert (frame["status"] != "error").all()
    assert frame["model_id"].nunique() == 3

    # the ranking leaderboard and the claims table: one row per declared claim, each with a status and why
    assert "leaderboard" in proc.stdout
    claims = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text()).get("claims") or []
    if claims:
        assert "claims (this run's verdict" in proc.stdout
        table = pd.read_csv(tmp_path / "smoke" / "report" / "claims.csv")
        assert list(table["id"]) == [c["id"] for c in claims]
        assert table["status"].isin(STATUSES).all() and table["reason"].notna().all()

    # a relation row for an observable of the training-dynamics metric
    measures = set(frame.loc[frame["metric"] == dynamics, "measure"].astype(str))
    assert measures, f"{dynamics} wrote no records"
    rows = [o for o in relation_observables(tmp_path / "smoke" / "report")
            if o.startswith(f"{dynamics}.") or o.rpartition("/")[2] in measures]
    assert rows, f"no relation row for a {dynamics} observable"
