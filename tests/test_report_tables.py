"""Leaderboard and relation table on synthetic records with known structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.records import normalise
from harness.report.tables import relation
from harness.report.tables import trajectories as leaderboard
from harness.store import to_frame

SIZES = [("70m", 7e7), ("160m", 1.6e8), ("410m", 4.1e8)]
STEPS = [0, 16, 128, 512, 1000, 4000, 16000, 64000]


def make_frame(seed: int = 0, noise: float = 0.05, run_id: str = "run1", obs_fn=None) -> pd.DataFrame:
    """3 sizes x 8 steps. loss and acc improve with log(step) and size; ``obs.tracks`` is a
    deterministic function of log(step) plus independent noise (no link to performance beyond
    time); ``obs.layer`` is per-layer (must not reach the leaderboard)."""
    rng = np.random.default_rng(seed)
    rows = []
    obs_fn = obs_fn or (lambda ls: np.sqrt(ls) * 2.0)
    for m, (size, n_params) in enumerate(SIZES):
        for st in STEPS:
            ls = np.log1p(st)
            base = dict(family="toy", model_id=f"toy-{size}", size=size, n_params=int(n_params), step=st,
                        checkpoint=f"step{st}", tokens_seen=(st + 1) * 1024, run_id=run_id, git_sha="deadbeef00",
                        metric_config_hash="mc1", model_config_hash="mo1", status="ok", scope="checkpoint",
                        seed=0, metric_version="1", versions={"torch": "2.1", "harness": "0.1"})
            rows.append(normalise({**base, "metric": "loss", "measure": "loss", "higher_is_better": False,
                                   "performance": "loss",
                                   "value": 6 - 0.35 * ls - 0.4 * m + rng.normal(0, noise)}))
            rows.append(normalise({**base, "metric": "lm_eval", "measure": "acc", "task": "pydoc_mc",
                                   "higher_is_better": True, "stderr": 0.02, "n": 397, "performance": "score",
                                   "value": 0.25 + 0.02 * ls + 0.04 * m + rng.normal(0, noise)}))
            rows.append(normalise({**base, "metric": "obs", "measure": "tracks",
                                   "value": obs_fn(ls) + rng.normal(0, 0.3)}))
            rows.append(normalise({**base, "metric": "obs", "measure": "tracks", "layer": "h.0", "value": 1.0}))
    rows.append(normalise({**base, "metric": "lm_eval", "measure": "lm_eval", "status": "skipped",  # noqa: F821
                           "message": "no tokenizer", "step": 0, "model_id": "toy-x"}))
    return to_frame(rows)


def test_leaderboard_layout_arrows_and_stderr():
    f = make_frame()
    lb = leaderboard(f)
    d = lb.display
    assert list(d.columns[:5]) == ["family", "size", "model_id", "checkpoint", "step"]
    assert list(d.columns[5:]) == ["pydoc_mc/acc ↑", "loss.loss ↓", "obs.tracks"]  # declared scores, losses, rest
    assert len(d) == len(SIZES) * len(STEPS)  # per-layer and skipped records are not rows
    assert list(d["size"].drop_duplicates()) == ["70m", "160m", "410m"]  # parameter order
    first = d[d["model_id"] == "toy-70m"]
    assert list(first["step"].astype(int)) == STEPS
    # cell = the record's value ± its stderr (checked against the raw record)
    rec = f[(f.measure == "acc") & (f.model_id == "toy-160m") & (f.step == 512)].iloc[0]
    cell = d[(d.model_id == "toy-160m") & (d.step == "512")]["pydoc_mc/acc ↑"].iloc[0]
    assert cell == f"{rec.value:.4g} ± 0.02"
    num = lb.data.set_index(["model_id", "step"])
    assert num.loc[("toy-160m", 512), "pydoc_mc/acc"] == rec.value
    assert any("runs: run1" in x for x in lb.footer) and any("deadbeef00" in x for x in lb.footer)
    assert any("mc1" in x for x in lb.footer) and "records: ok 96, skipped 1, error 0" in lb.footer


def test_leaderboard_selects_measures_and_explains_empty():
    lb = leaderboard(make_frame(), measures=["lm_eval:*"])
    assert list(lb.display.columns[5:]) == ["pydoc_mc/acc ↑"]
    empty = leaderboard(make_frame().assign(status="error"))
    assert empty.empty and "no ok model-level records" in empty.note and "error 97" in empty.note
    assert leaderboard(pd.DataFrame(columns=make_frame().columns)).note.endswith("(no records)")


def test_relation_matches_scipy_and_has_baseline_row():
    f = make_frame()
    rel = relation(f, n_boot=200, n_perm=200)
    d = rel.data
    assert set(d["performance"]) == {"pydoc_mc/acc", "loss.loss"}
    acc = d[d["performance"] == "pydoc_mc/acc"]
    assert list(acc["observable"]) == ["log(tokens_seen)", "obs.tracks"]  # baseline first
    # direct scipy on the same points
    pts = f[(f.layer.isna()) & (f.status == "ok")]
    x = pts[pts.measure == "tracks"].sort_values(["model_id", "step"])["value"].to_numpy()
    y = pts[pts.measure == "acc"].sort_values(["model_id", "step"])["value"].to_numpy()
    row = acc[acc.observable == "obs.tracks"].iloc[0]
    assert row["n"] == 24 and row["n_models"] == 3
    assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert row["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert row["spearman_lo"] < row["spearman"] < row["spearman_hi"]
    tok = pts[pts.measure == "acc"].sort_values(["model_id", "step"])["tokens_seen"].to_numpy()
    base = acc[acc.observable == "log(tokens_seen)"].iloc[0]
    assert base["spearman"] == pytest.approx(stats.spearmanr(np.log(tok), y).statistic)
    np.testing.assert_allclose(d["q_bh"], stats.false_discovery_control(d["perm_p"], method="bh"))
    assert "partial r | log step, size [95%]" in rel.display.columns and "oos gain [95%]" in rel.display.columns


def test_partial_correlation_removes_pure_time_trend():
    """obs = f(log step) + independent noise: raw rho with performance is large (both move with
    time), the partial correlation controlling for log(step) and size is ~0."""
    partials = []
    for seed in range(8):
        d = relation(make_frame(seed=seed), n_boot=0, n_perm=0).data
        row = d[(d.observable == "obs.tracks") & (d.performance == "pydoc_mc/acc")].iloc[0]
        assert row["spearman"] > 0.5
        partials.append(row["partial_r"])
    assert abs(np.mean(partials)) < 0.1  # 8 x n=24: sd of the mean about 0.07
    assert max(abs(p) for p in partials) < 0.6


def test_partial_correlation_finds_real_link():
    """An observable that carries performance's own noise keeps a large partial correlation."""
    f = make_frame(seed=1)
    acc = f[(f.measure == "acc")].set_index(["model_id", "step"])["value"]
    sel = (f.metric == "obs") & f.layer.isna()
    f.loc[sel, "value"] = [acc[(m, s)] * 3 + 0.001 * i for i, (m, s) in enumerate(zip(f.loc[sel, "model_id"],
                                                                                    f.loc[sel, "step"]))]
    d = relation(f, n_boot=0, n_perm=500).data
    row = d[(d.observable == "obs.tracks") & (d.performance == "pydoc_mc/acc")].iloc[0]
    assert row["partial_r"] > 0.95 and row["perm_p"] < 0.01


def test_constant_series_row_says_why():
    f = make_frame()
    f.loc[f.measure == "acc", "value"] = 0.0  # e.g. a random model never gets the cloze word
    rel = relation(f, n_boot=0, n_perm=0)
    rows = rel.display[rel.display.performance == "pydoc_mc/acc"]
    assert len(rows) == 2 and set(rows["note"]) == {"constant performance"}
    assert (rows["spearman [95% CI]"] == "").all()


def test_relation_empty_cases_explain_themselves():
    r = relation(make_frame(), performance=("nothing:*",))
    assert r.empty and "no performance measure" in r.note
    r = relation(make_frame().iloc[:8], n_boot=0, n_perm=0)
    assert r.empty and "fewer than" in r.note
