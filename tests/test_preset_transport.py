"""Smoke tests of the Wang & Du transport presets (`pico_transport`, `pythia_transport`): each runs
offline at a reduced size (a smaller mini suite, fewer replicates), as a user would, and must end
with no error records, a claims row per declared claim with a status and a reason, and a relation
row for a transport observable.

The reduced suites are far too small for the paper's phenomena: these tests check that a preset
works end to end and that every claim is decided, not *which* verdict it gets (docs/presets.md
lists the verdicts of the full presets).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.report.claims import STATUSES
from harness.store import load_results

from conftest import run_harness

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "conf" / "experiment"
FAST = ("metric.transport.n_reps=4", "metric.transport.n_boot=50", "metric.transport.event_records=0")

#: preset -> reduced-size overrides (4 sizes kept: the fits need >= 3, compressibility >= 4)
SMOKE = {
    "pico_transport": ("model.build.widths=[8,16,24,32]", "model.build.steps=30", "model.build.save_every=10",
                       "model.build.warmup=3", *FAST),
}


def _relation_observables(report: Path) -> set[str]:
    seen: set[str] = set()
    for csv in sorted(report.glob("relation*.csv")):
        try:
            t = pd.read_csv(csv)
        except pd.errors.EmptyDataError:
            continue
        if "observable" in t:
            seen |= set(t["observable"].dropna().astype(str))
    return seen


@pytest.mark.parametrize("preset", sorted(SMOKE))
def test_transport_preset_smoke(preset, tmp_path):
    proc = run_harness(f"experiment={preset}", *SMOKE[preset], f"results_dir={tmp_path}", "run_name=smoke",
                       "progress=off", "print_config=false", env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "0 error records" in proc.stdout
    frame = load_results(tmp_path / "smoke")
    assert (frame["status"] != "error").all()
    # the finite-size fits ran on 4 sizes (so the compressibility records are numbers, not skipped)
    fits = frame[(frame["metric"] == "transport") & (frame["measure"] == "D") & (frame["status"] == "ok")]
    assert len(fits) and (fits["n"] == 4).all()
    assert not frame[(frame["measure"] == "D_loso_spread") & (frame["status"] == "skipped")].shape[0]

    claims = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())["claims"]
    assert "claims (this run's verdict" in proc.stdout
    table = pd.read_csv(tmp_path / "smoke" / "report" / "claims.csv")
    assert list(table["id"]) == [c["id"] for c in claims]
    assert table["status"].isin(STATUSES).all() and table["reason"].notna().all()
    # the departure claims are decided by a test (a p or q value), not left untestable
    dep = table[table["id"].str.contains("departs")]
    assert len(dep) and dep["status"].isin(["holds", "does not hold"]).all(), dep[["id", "reason"]]
    assert dep["reason"].str.contains(r"\b[pq] = ").all()

    # the relation tables hold a transport observable (labels are `task/measure`, or `metric.measure`)
    measures = set(frame.loc[frame["metric"] == "transport", "measure"].astype(str))
    rows = [o for o in _relation_observables(tmp_path / "smoke" / "report")
            if o.startswith("transport.") or o.split(" ")[0].rpartition("/")[2] in measures]
    assert any(o.split(" ")[0].rpartition("/")[2] in ("v_rel", "T_norm") for o in rows), sorted(rows)[:20]


def test_hub_variant_offline_is_one_line_naming_the_offline_variant(tmp_path):
    proc = run_harness("experiment=pico_transport", "model.source=hub", "model.size=[tiny,small,medium,large]",
                       f"results_dir={tmp_path}", "print_config=false", env={"HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "HF_HUB_OFFLINE" in lines[0] and "experiment=pico_transport" in lines[0]
    assert not list(tmp_path.rglob("records*.jsonl"))  # failed before any work
