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

from conftest import relation_observables, run_harness

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "conf" / "experiment"
FAST = ("metric.transport.n_reps=4", "metric.transport.n_boot=50", "metric.transport.event_records=0")

#: preset -> reduced-size overrides (4 sizes kept: the fits need >= 3, compressibility >= 4)
SMOKE = {
    "pico_transport": ("model.build.widths=[8,16,24,32]", "model.build.steps=30", "model.build.save_every=10",
                       "model.build.warmup=3", *FAST),
    # saves 0, 1, 2, 4, 8: log_spaced (num 6) keeps all of them, 4 difference fields per size
    "pythia_transport": ("model.mini.steps=8", "model.mini.checkpoint_every=8", "+model.mini.threads=1", *FAST),
}


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

    # the transport figure: exponents per step, real vs both nulls
    assert (tmp_path / "smoke" / "report" / "figures" / "transport" / "transport_exponents.png").stat().st_size > 10_000

    # the relation tables hold a transport observable (labels are `task/measure`, or `metric.measure`)
    measures = set(frame.loc[frame["metric"] == "transport", "measure"].astype(str))
    rows = [o for o in relation_observables(tmp_path / "smoke" / "report")
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


# ---- the departure verdict on fields with a known answer ------------------------------------------


def _field(n: int, seed: int, dist: str) -> dict:
    import numpy as np
    import torch

    g = np.random.default_rng(seed)
    a = g.standard_t(1.5, size=n) if dist == "t" else g.standard_normal(n)
    return {"w": torch.tensor(a.reshape(n // 40, 40), dtype=torch.float32)}


@pytest.fixture(scope="module")
def departure_verdicts(tmp_path_factory):
    """The presets' `differs` claims on the transport metric's own departure records, for a Gaussian
    and a heavy-tailed (Student t, 1.5 dof) "real" field at 4 sizes and 6 independent steps."""
    from harness.report.claims import evaluate
    from harness_plugins.metrics.transport import TransportMetric
    from test_transport_metric import run_checkpoints, suite

    tmp = tmp_path_factory.mktemp("departures")
    met = TransportMetric(n_reps=8, q=0.99, alpha=0.8, n_boot=200, event_records=0)
    verdicts = {}
    for dist in ("gauss", "t"):
        rows = []
        for step in range(6):
            rows += run_checkpoints(met, {f"n{N}": _field(N, N + 97 * step, dist) for N in (2000, 6000, 16000, 40000)},
                                    tmp, step=step)
        recs = pd.DataFrame([{"metric": "transport", "measure": m.measure, "task": m.task, "layer": None,
                              "model_id": "suite", "step": m.step, "value": m.value, "stderr": m.stderr, "n": m.n,
                              "status": m.status, "message": m.message, "extra": None}
                             for m in suite(met, rows, tmp).values() if m.size is None])
        for e in ("D", "z", "delta"):
            for ch in ("R1", "R2"):
                verdicts[dist, e, ch] = evaluate(recs, {"series": f"transport:{e}_departure:{ch}", "test": "differs",
                                                        "at": "all", "quantifier": "any"})
    return verdicts


def test_planted_null_fields_are_indistinguishable_from_their_nulls(departure_verdicts):
    # with random node assignment the probe sees the field's marginal only: a permuted field (R1) is
    # exchangeable with the real one, for any field; a Gaussian field is also its own R2 null
    for key, v in departure_verdicts.items():
        if key[2] == "R1" or key[0] == "gauss":
            assert v.status == "does not hold" and "indistinguishable" in v.reason, (key, v.reason)


def test_planted_heavy_tailed_field_departs_from_the_gaussian_null(departure_verdicts):
    # a heavy-tailed marginal changes the cascade-size and duration exponents against Gaussian loads
    for e in ("D", "z"):
        v = departure_verdicts["t", e, "R2"]
        assert v.status == "holds", (e, v.reason)
