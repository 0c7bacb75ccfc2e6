"""The ranking leaderboard: one row per model, planted scores ranked in order, ties, at=, labels,
flagged values, several families."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.records import normalise
from harness.report.ranking import leaderboard, parse_at, rankings, short_labels
from harness.store import to_frame


def _rec(**kw):
    base = dict(family="fam", status="ok", scope="checkpoint", seed=0, metric_version="1", run_id="r",
                metric_config_hash="m", model_config_hash="o")
    return normalise({**base, **kw})


def planted(scores: dict[str, list[float]], family: str = "fam", steps=(0, 10, 20)) -> list[dict]:
    """Runs with an accuracy per step (declared score), a loss (declared loss), an observable,
    and a trajectory record (one per run)."""
    rows = []
    for i, (run, accs) in enumerate(scores.items()):
        mid = f"{family}/cfg={run},seed=0"
        for st, a in zip(steps, accs):
            common = dict(family=family, model_id=mid, size=run, n_params=1000 * (i + 1), step=st,
                          checkpoint=f"step{st}")
            rows.append(_rec(**common, metric="ev", measure="acc", task="t", value=a, stderr=0.01,
                             higher_is_better=True, performance="score"))
            rows.append(_rec(**common, metric="loss", measure="loss", value=1 - a, higher_is_better=False,
                             performance="loss"))
            rows.append(_rec(**common, metric="obs", measure="norm", value=10.0 + i + st))
        rows.append(_rec(family=family, model_id=mid, size=run, step=steps[-1], scope="trajectory",
                         metric="fit", measure="alpha", value=0.1 * i))
    return rows


def test_one_row_per_model_ranked_by_the_declared_score_with_ties():
    f = to_frame(planted({"a": [0.1, 0.2, 0.5], "b": [0.1, 0.3, 0.7], "c": [0.2, 0.2, 0.5], "d": [0.0, 0.1, 0.2]}))
    lb = leaderboard(f)
    d = lb.data
    assert len(d) == 4  # one row per model, not per checkpoint
    assert list(d["model"]) == ["cfg=b", "cfg=a", "cfg=c", "cfg=d"]  # the shared prefix and ",seed=0" cut
    assert list(d["rank"]) == [1, 2, 2, 4]  # a and c tie at 0.5: same rank, next is 4
    assert list(d["t/acc"]) == [0.7, 0.5, 0.5, 0.2] and set(d["step"]) == {20}
    cols = list(lb.display.columns)
    assert cols[:4] == ["rank", "model", "size", "step"]
    # the ranking measure first, then other performance measures, then the observables
    assert cols[4:] == ["t/acc ↑", "loss.loss ↓", "fit.alpha", "obs.norm"]
    assert lb.display["t/acc ↑"].iloc[0] == "0.7 ± 0.01"
    assert "ranked by t/acc (higher is better) at final" in lb.footer[0]
    # the trajectory observable belongs to its run; the checkpoint observable is at the row's step
    assert list(d.set_index("model").loc[["cfg=a", "cfg=b"], "fit.alpha"]) == pytest.approx([0.0, 0.1])
    assert d.set_index("model").loc["cfg=d", "obs.norm"] == 10.0 + 3 + 20


def test_rank_by_a_loss_sorts_ascending_and_at_best_and_step():
    f = to_frame(planted({"a": [0.1, 0.6, 0.5], "b": [0.1, 0.3, 0.7]}))
    lb = leaderboard(f, rank_by="loss:loss")
    assert list(lb.data["model"]) == ["cfg=b", "cfg=a"] and list(lb.data["loss.loss"]) == pytest.approx([0.3, 0.5])
    best = leaderboard(f, at="best")
    assert best.data.set_index("model").loc["cfg=a", "step"] == 10  # a peaks at step 10 (0.6)
    at0 = leaderboard(f, at="step=10")
    assert list(at0.data["model"]) == ["cfg=a", "cfg=b"] and list(at0.data["step"]) == [10, 10]
    missing = leaderboard(f, at="step=15")
    assert missing.data["rank"].isna().all() and "unranked" in missing.note and "at step 15" in missing.note
    with pytest.raises(ValueError, match="final, best or step=N"):
        parse_at("last")


def test_no_declared_performance_lists_models_unranked_and_says_why():
    rows = [r for r in planted({"a": [0.1, 0.2, 0.3]}) if r["metric"] not in ("ev", "loss")]
    lb = leaderboard(to_frame(rows))
    assert len(lb.data) == 1 and lb.data["rank"].isna().all()
    assert "no performance measure declared" in lb.footer[0]


def test_flagged_values_are_shown_flagged_not_as_numbers():
    rows = planted({"a": [0.1, 0.2, 0.3], "b": [0.1, 0.2, 0.4]})
    for r in rows:
        if r["metric"] == "fit" and r["model_id"].endswith("cfg=a,seed=0"):
            r["warning"] = "flagged: no power law: loss fell to 1e-9"
            r["value"] = 1.07e14
    for r in rows:  # a second flagged column of the same run, same reason
        if r["metric"] == "fit" and r["model_id"].endswith("cfg=a,seed=0"):
            rows.append({**r, "measure": "c", "record_id": r.get("record_id", "") + "c"})
            break
    lb = leaderboard(to_frame(rows))
    row = lb.display.set_index("model").loc["cfg=a"]
    assert row["fit.alpha"] == row["fit.c"] == "flagged [1]" and "1.07e" not in " ".join(map(str, row))
    assert np.isnan(lb.data.set_index("model").loc["cfg=a", "fit.alpha"])
    # the reason is said once, in a footnote naming the model
    notes = [line for line in lb.footer if line.startswith("[1]")]
    assert notes == ["[1] cfg=a: flagged by its metric, not a result: no power law: loss fell to 1e-9"]
    assert sum("loss fell to 1e-9" in line for line in lb.footer) == 1


def test_one_ranking_per_family_plus_combined_when_the_measure_is_shared():
    f = to_frame(planted({"a": [0.1, 0.2, 0.3]}, family="x") + planted({"a": [0.1, 0.2, 0.9],
                                                                        "b": [0, 0, 0.1]}, family="y"))
    boards = rankings(f)
    assert [b.name for b in boards] == ["leaderboard_x", "leaderboard_y", "leaderboard_combined"]
    comb = boards[-1].data
    assert list(comb["model"]) == ["y:cfg=a", "x:cfg=a,seed=0", "y:cfg=b"] and list(comb["rank"]) == [1, 2, 3]


def test_short_labels_are_distinct():
    assert short_labels(["toy/T=0.1,seed=0", "toy/T=0.01,seed=0"]) == {"toy/T=0.1,seed=0": "T=0.1",
                                                                      "toy/T=0.01,seed=0": "T=0.01"}
    ids = ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-1b-bf16"]
    assert list(short_labels(ids).values()) == ["70m", "160m", "1b-bf16"]
    assert short_labels(["a/x", "a/x"]) == {"a/x": "x"}
    assert len(set(short_labels(["s,a", "s,b"]).values())) == 2
    _ = pd  # noqa: F841
