"""Smoke tests of the seed-paper presets: each runs offline at a reduced size, as a user would
(``python -m harness experiment=NAME`` plus size overrides), and must end with no error records,
a claims row per claim with a status, and a relation row for a training-dynamics observable.

The reduced sizes are too small for the papers' phenomena: these tests check that the preset
works end to end and that every claim is decided, not *which* verdict it gets (the README lists
the verdicts at full size).
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

#: preset -> (reduced-size overrides, the training-dynamics metric whose observable must reach a relation table)
SMOKE = {
    # the preset's 3 temperatures x 2 learning rates: the model-level relation (where trajectory
    # metrics enter) needs >= 3 runs
    "one_third": (("model.d=16", "model.vocab=32", "model.steps=300", "model.batch_size=256",
                   "model.n_checkpoints=12"), "time_scaling"),
    "gd_subspace": (("model.d=16", "model.steps=200", "model.batch_size=128", "model.n_checkpoints=5",
                     "model.seeds=[0]", "model.eval_batches=1"), "subspace"),
}


def _is_from(label: str, metric: str, measures: set[str]) -> bool:
    head, _, tail = label.rpartition("/")
    return label.startswith(f"{metric}.") or (bool(head) and tail in measures)


@pytest.mark.parametrize("preset", sorted(SMOKE))
def test_preset_smoke(preset, tmp_path):
    overrides, dynamics = SMOKE[preset]
    proc = run_harness(f"experiment={preset}", *overrides, f"results_dir={tmp_path}", "run_name=smoke",
                       "progress=off", "print_config=false", env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "0 error records" in proc.stdout
    frame = load_results(tmp_path / "smoke")
    assert (frame["status"] != "error").all()

    # the claims table: printed at the end, one row per declared claim, each with a status
    claims = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())["claims"]
    assert "claims (this run's verdict" in proc.stdout
    table = pd.read_csv(tmp_path / "smoke" / "report" / "claims.csv")
    assert len(table) == len(claims) and list(table["id"]) == [c["id"] for c in claims]
    assert table["status"].isin(STATUSES).all()
    assert table["reason"].notna().all()  # every verdict says why
    html = (tmp_path / "smoke" / "report" / "report.html").read_text()
    assert "<h2>claims</h2>" in html

    # a relation row for an observable of the training-dynamics metric
    measures = set(frame.loc[frame["metric"] == dynamics, "measure"].astype(str))
    assert measures, f"{dynamics} wrote no records"
    rows = [o for o in relation_observables(tmp_path / "smoke" / "report") if _is_from(o, dynamics, measures)]
    assert rows, f"no relation row for a {dynamics} observable (measures: {sorted(measures)})"


def test_lm_eval_missing_fails_at_config_time_naming_the_install(monkeypatch):
    import importlib.util

    from harness.api import ConfigError
    from harness.runner import build_metrics

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "lm_eval" else real(name, *a, **k))
    with pytest.raises(ConfigError, match=r"lm-evaluation-harness, which is not installed: pip install .*\[lm_eval\]"):
        build_metrics({"lm_eval": {"_target_": "harness_plugins.metrics.lm_eval.LmEvalMetric"}}, [])


def test_lm_eval_is_part_of_the_base_install():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("lm-eval[hf]") for d in deps)
