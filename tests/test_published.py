"""Published Pythia scores and outside score files, joined as performance records.

Independent truths: the shipped CSV read directly with pandas/gzip (the records must carry the
same numbers), a Hub-layout mirror built in the test (tiny GPT-NeoX weights under the public
model ids and revisions ``step1000``/``step143000``), and score files written by hand.
"""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

import harness
from harness.api import ConfigError, ParameterError
from harness.runner import Runner, RunSpec
from harness_plugins.models.pythia import PythiaFamily
from harness_plugins.models.pythia import published as P

SHIPPED = Path(P.__file__).with_name("data") / "pythia_v1_evals.csv.gz"


def _published_value(model: str, step: int, task: str, metric: str) -> tuple[float, float | None]:
    """The number as written in the shipped CSV (read with the csv module, not pandas)."""
    with gzip.open(SHIPPED, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            if (row["model"], row["shots"], row["step"], row["task"], row["metric"]) == (
                    model, "0", str(step), task, metric):
                return float(row["value"]), (float(row["stderr"]) if row["stderr"] else None)
    raise KeyError((model, step, task, metric))


def _run(tmp_path: Path, model: dict, metrics: dict, name: str = "r", **kw) -> pd.DataFrame:
    spec = RunSpec(model_name="pythia" if "source" in model else model.pop("_name"), model=model,
                   metrics=metrics, data=kw.pop("data", {}), checkpoints=kw.pop("checkpoints", {"select": "all"}),
                   run_dir=tmp_path / name, run_root=tmp_path / name, progress="off", report=False, **kw)
    summary = Runner(spec).run()
    frame = harness.load_results(tmp_path / name)
    frame.attrs["summary"] = summary
    return frame


def test_shipped_copy_is_the_shared_data():
    shared = Path("/work/shared/data/pythia_evals/pythia_v1_evals.csv.gz")
    if shared.exists():
        assert SHIPPED.read_bytes() == shared.read_bytes()
    assert SHIPPED.stat().st_size > 500_000  # the real table, not a pointer
    assert len(P.published_steps("160m")) == 27 and P.published_steps("160m")[-1] == 143000


def test_published_source_reproduces_published_numbers(tmp_path):
    frame = _run(tmp_path, {"source": "published", "size": ["70m", "1b"]}, {"loss": {}})
    pub = frame[frame.metric == "published"]
    assert set(pub.model_id) == {"EleutherAI/pythia-70m", "EleutherAI/pythia-1b-bf16"}
    assert pub.step.nunique() == 27 and set(pub.status) == {"ok"}
    for model_id, model, step, task, metric in [
        ("EleutherAI/pythia-70m", "pythia-70m", 143000, "lambada_openai", "acc"),
        ("EleutherAI/pythia-70m", "pythia-70m", 3000, "piqa", "acc_norm"),
        ("EleutherAI/pythia-1b-bf16", "pythia-1b-bf16", 13000, "lambada_openai", "ppl"),
    ]:
        value, stderr = _published_value(model, step, task, metric)
        rec = pub[(pub.model_id == model_id) & (pub.step == step) & (pub.task == task) & (pub.measure == metric)]
        assert len(rec) == 1
        assert rec.value.iloc[0] == value and rec.stderr.iloc[0] == pytest.approx(stderr, rel=0, abs=0)
    # declared performance: the primary score, the other scores; ppl is lower-is-better
    lam = pub[(pub.task == "lambada_openai")]
    assert set(lam[lam.measure == "acc"].performance) == {"primary"}
    assert set(lam[lam.measure == "ppl"].performance) == {"score"}
    assert not lam[lam.measure == "ppl"].higher_is_better.any()
    # no weights: the checkpoint metric is skipped with the reason, not an error
    loss = frame[frame.metric == "loss"]
    assert set(loss.status) == {"skipped"} and loss.message.str.contains("no weights").all()
    assert "published: " in frame.attrs["summary"].line() and "0 unmatched" in frame.attrs["summary"].line()
    # the tokens and parameter counts of the public schedule
    rec = pub[(pub.model_id == "EleutherAI/pythia-70m") & (pub.step == 1000)].iloc[0]
    assert rec.tokens_seen == 1000 * 2048 * 1024 and rec.n_params > 7e7


def test_published_history_is_the_published_curve():
    fam = PythiaFamily(source="published", size="160m")
    log = fam.history("EleutherAI/pythia-160m")
    value, _ = _published_value("pythia-160m", 63000, "lambada_openai", "ppl")
    assert log.set_index("step").loc[63000, "lambada_openai/ppl"] == value
    assert list(log.step) == P.published_steps("160m") and (log.tokens_seen == log.step * 2048 * 1024).all()


def test_published_parameters_are_checked():
    with pytest.raises(ParameterError, match="size"):
        PythiaFamily(source="published", size="14m")
    with pytest.raises(ParameterError, match="deduped"):
        PythiaFamily(source="published", deduped=True)
    with pytest.raises(ParameterError, match="published.jion"):
        PythiaFamily(source="published", published={"jion": False})


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """A Hub-layout mirror of tiny Pythia-shaped models under public ids and revisions."""
    from harness_plugins.models.pythia.build import build

    built = build(cache_dir=str(tmp_path_factory.mktemp("mini")), sizes=["xs"], steps=4, checkpoint_every=4,
                  seq_len=32, batch_size=4, vocab_size=300, probe_batch_size=4,
                  data={"name": "pydoc", "max_docs": 10})
    root = tmp_path_factory.mktemp("mirror")
    for model in ("EleutherAI/pythia-160m", "EleutherAI/pythia-160m-deduped"):
        for src, dst in (("step0", "step1000"), ("step4", "step143000")):
            target = root / model / dst
            shutil.copytree(built / "pythia-mini-xs" / src, target)
            for f in target.glob("probe*"):
                f.unlink()
    return root


DATA = {"name": "pydoc", "max_docs": 10, "seq_len": 32, "batch_size": 4, "n_batches": 1}


def test_local_mirror_gets_published_numbers_of_its_size(mirror, tmp_path):
    frame = _run(tmp_path, {"source": "local", "root": str(mirror)}, {"loss": {}}, data=DATA)
    loss = frame[frame.metric == "loss"]
    assert set(loss.status) == {"ok"} and len(loss[loss.measure == "loss"]) == 4
    assert set(loss[loss.measure == "loss"].performance) == {"loss"}  # declared by the loss metric
    pub = frame[frame.metric == "published"]
    # only the standard model is the published one; the deduped mirror gets nothing
    assert set(pub.model_id) == {"EleutherAI/pythia-160m"} and set(pub.step) == {1000, 143000}
    for step in (1000, 143000):
        value, _ = _published_value("pythia-160m", step, "lambada_openai", "acc")
        got = pub[(pub.step == step) & (pub.task == "lambada_openai") & (pub.measure == "acc")].value
        assert list(got) == [value]
    # switchable off
    off = _run(tmp_path, {"source": "local", "root": str(mirror), "published": {"join": False}},
               {"loss": {}}, name="off", data=DATA)
    assert "published" not in set(off.metric)


def test_score_file_join_counts_and_errors(tmp_path):
    scores = tmp_path / "evals.csv"
    pd.DataFrame({
        "model": ["EleutherAI/pythia-70m", "pythia-70m", "pythia-70m", "pythia-999m"],
        "step": [1000, 143000, 7, 1000],
        "task": ["mytask", "mytask", "mytask", "mytask"],
        "metric": ["acc", "acc", "acc", "acc"],
        "value": [0.1, 0.2, 0.3, 0.4],
        "stderr": [0.01, 0.02, None, None],
    }).to_csv(scores, index=False)
    frame = _run(tmp_path, {"source": "published", "size": "70m", "published": {"tasks": ["lambada_openai"]}},
                 {"loss": {}}, scores=[str(scores)], checkpoints={"select": "list", "steps": [1000, 143000]})
    got = frame[frame.metric == "scores"].sort_values("step")
    assert list(got.value) == [0.1, 0.2] and list(got.stderr) == [0.01, 0.02]
    assert set(got.performance) == {"score"} and got.higher_is_better.all()
    line = frame.attrs["summary"].line()
    assert "scores: 2 rows matched, 0 outside the selection, 2 unmatched" in line
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"model": ["nobody"], "step": [1], "metric": ["acc"], "value": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ConfigError, match=r"no row matches.*model=nobody step=1"):
        _run(tmp_path, {"source": "published", "size": "70m"}, {"loss": {}}, name="bad", scores=[str(bad)])
    cols = tmp_path / "cols.csv"
    pd.DataFrame({"step": [1], "value": [1.0]}).to_csv(cols, index=False)
    with pytest.raises(ConfigError, match=r"missing column\(s\) model \(or size\), metric"):
        _run(tmp_path, {"source": "published", "size": "70m"}, {"loss": {}}, name="cols", scores=[str(cols)])


def test_wandb_export_and_jsonl(tmp_path):
    from harness.scores import read_score_file

    wb = tmp_path / "wandb.csv"
    pd.DataFrame({"Step": [1000, 2000], "run-a - eval/lambada/acc": [0.3, 0.4],
                  "run-a - eval/lambada/acc__MIN": [0.3, 0.4], "run-a - eval/lambada/acc__MAX": [0.3, 0.4]}
                 ).to_csv(wb, index=False)
    t = read_score_file(wb)
    assert list(t.frame.model_id) == ["run-a", "run-a"] and list(t.frame.task) == ["eval/lambada"] * 2
    assert list(t.frame.measure) == ["acc", "acc"] and list(t.frame.value) == [0.3, 0.4]
    js = tmp_path / "s.jsonl"
    js.write_text('{"size": "70m", "step": 5, "task": "t", "metric": "loss", "value": 2.5}\n')
    t = read_score_file(js)
    assert t.frame.iloc[0]["size"] == "70m" and not t.frame.iloc[0]["higher_is_better"]
