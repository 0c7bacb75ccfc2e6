"""lm_eval metric: same numbers as lm-eval on a saved model dir; brute-force cloze scores;
offline data builders; skips; parameter errors."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from harness.api import CheckpointContext, CheckpointRef, ParameterError  # noqa: E402
from harness.lm import CausalLMCheckpoint  # noqa: E402
from harness_plugins.metrics.lm_eval import LmEvalMetric  # noqa: E402
from harness_plugins.metrics.lm_eval import data as D  # noqa: E402
from harness_plugins.metrics.lm_eval import metric as M  # noqa: E402
from harness_plugins.metrics.lm_eval.demo import pydoc_tokenizer, save_pretrained, tiny_lm  # noqa: E402

LIMIT = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_eval")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf_datasets")
    tok = pydoc_tokenizer()
    model = tiny_lm(tok)
    task_dir = D.ensure_task_dir(root / "cache")
    return {"root": root, "tok": tok, "model": model, "task_dir": task_dir}


def _ctx(env, ckpt, tmp_path):
    return CheckpointContext(metric_config={}, artifact_root=tmp_path, seed=0, checkpoint=ckpt)


def _ckpt(env, **kw):
    ref = CheckpointRef("tiny", "tiny-run", "s", 100)
    return CausalLMCheckpoint(ref, env["model"], tokenizer=env["tok"], **kw)


@pytest.fixture(scope="module")
def plugin_records(env, tmp_path_factory):
    metric = LmEvalMetric(limit=LIMIT, bootstrap_iters=50, cache_dir=str(env["root"] / "cache"))
    out = tmp_path_factory.mktemp("art")
    return list(metric.measure_checkpoint(_ctx(env, _ckpt(env), out))), out


def test_plugin_matches_lm_eval_on_saved_model_dir(env, plugin_records):
    """Independent path: lm-eval loads the saved directory itself (its own model + tokenizer)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_dir = save_pretrained(env["model"], env["tok"], env["root"] / "model")
    ref = simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
        tasks=list(M.DEFAULT_TASKS), limit=LIMIT, bootstrap_iters=50, log_samples=False, device="cpu",
        batch_size=8, task_manager=TaskManager(include_path=str(env["task_dir"]), include_defaults=False),
    )
    recs, _ = plugin_records
    got = {(r.task, r.measure): r for r in recs}
    expected = {}
    for task, row in ref["results"].items():
        for key, val in row.items():
            if "," in key and not key.split(",")[0].endswith("_stderr"):
                expected[(task, key.split(",")[0])] = (val, row.get(key.split(",")[0] + "_stderr,none"))
    assert set(got) == set(expected)
    assert len(got) == 7  # cloze acc+perplexity, mc acc+acc_norm, ppl 3
    for key, (val, se) in expected.items():
        assert got[key].value == pytest.approx(val, rel=1e-6), key
        if isinstance(se, float):
            assert got[key].stderr == pytest.approx(se, rel=1e-6), key
        assert got[key].n == LIMIT
        assert got[key].higher_is_better == ref["higher_is_better"][key[0]][key[1]]


def test_cloze_scores_match_brute_force(env, plugin_records):
    """acc and perplexity of pydoc_cloze recomputed by hand from the model's logits."""
    tok, model = env["tok"], env["model"]
    items = [json.loads(x) for x in (env["task_dir"] / "pydoc_cloze.jsonl").read_text().splitlines()[:LIMIT]]
    logps, greedy = [], []
    with torch.no_grad():
        for it in items:
            whole = tok(it["context"] + it["target"], add_special_tokens=False).input_ids
            n_ctx = len(tok(it["context"], add_special_tokens=False).input_ids)
            cont = whole[n_ctx:]
            ids = whole[-(tok.model_max_length + 1):][:-1]  # lm-eval: drop last token, left-truncate
            logits = model(torch.tensor([ids])).logits[0, -len(cont):].log_softmax(-1)
            tgt = torch.tensor(cont)
            logps.append(float(logits.gather(1, tgt[:, None]).sum()))
            greedy.append(bool((logits.argmax(-1) == tgt).all()))
    recs, _ = plugin_records
    got = {(r.task, r.measure): r.value for r in recs}
    assert got[("pydoc_cloze", "acc")] == pytest.approx(sum(greedy) / len(greedy))
    assert got[("pydoc_cloze", "perplexity")] == pytest.approx(math.exp(-sum(logps) / len(logps)), rel=1e-4)


def test_global_rng_state_is_left_alone(env, tmp_path):
    """simple_evaluate reseeds random/numpy/torch; the metric must not leak that to later metrics."""
    import random

    import numpy as np

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    metric = LmEvalMetric(tasks=["pydoc_mc"], limit=2, bootstrap_iters=0, cache_dir=str(env["root"] / "cache"))
    list(metric.measure_checkpoint(_ctx(env, _ckpt(env), tmp_path)))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_random_model_mc_near_chance_and_records_settings(plugin_records):
    recs, art = plugin_records
    mc = next(r for r in recs if r.task == "pydoc_mc" and r.measure == "acc")
    assert 0.0 <= mc.value <= 1.0 and mc.higher_is_better is True
    assert mc.extra["limit"] == LIMIT and mc.extra["bootstrap_iters"] == 50 and mc.extra["filter"] == "none"
    ppl = next(r for r in recs if r.measure == "bits_per_byte")
    assert ppl.higher_is_better is False and ppl.value > 0
    raw = json.loads((art / "tiny-run" / "step100" / "results.json").read_text())
    assert set(raw["results"]) == set(M.DEFAULT_TASKS)


def test_data_build_is_deterministic_and_correct(tmp_path):
    a, b = D.ensure_task_dir(tmp_path / "a"), D.ensure_task_dir(tmp_path / "b")
    assert a.name == b.name
    for task in D.OFFLINE_TASKS:
        assert (a / f"{task}.jsonl").read_bytes() == (b / f"{task}.jsonl").read_bytes()
        assert str(a) in (a / f"{task}.yaml").read_text()
    docs = D.corpus()
    cloze = [json.loads(x) for x in (a / "pydoc_cloze.jsonl").read_text().splitlines()]
    assert len(cloze) > 200
    for it in cloze[:50]:
        passage = it["context"] + it["target"]
        assert it["target"].startswith(" ") and it["target"][1:].isalpha()
        assert passage in " ".join(docs[it["id"].split("/")[0]].split())  # a real passage of the doc
    mc = [json.loads(x) for x in (a / "pydoc_mc.jsonl").read_text().splitlines()]
    labels = [it["label"] for it in mc]
    assert len(mc) > 200 and set(labels) == {0, 1, 2, 3}
    for it in mc[:50]:
        doc = " ".join(docs[it["id"].split("/")[0]].split())
        assert (it["context"] + it["choices"][it["label"]]) in doc  # the true next sentence
        assert len(set(it["choices"])) == 4
    word = [json.loads(x) for x in (a / "pydoc_word.jsonl").read_text().splitlines()]
    assert len(word) > 300 and {it["label"] for it in word} == {0, 1, 2, 3}
    assert word[0]["id"].split("/")[0] == max(docs)  # the corpus' last documents first (the held-out end)
    for it in word:
        doc = " ".join(docs[it["id"].split("/")[0]].split())
        true = it["choices"][it["label"]]
        assert (it["context"] + true) in doc  # the true next word of a real passage
        assert len(it["context"].split()) >= 8 and true[1:].isalpha() and len(true) >= 4
        others = [c for i, c in enumerate(it["choices"]) if i != it["label"]]
        assert len({c.lower() for c in it["choices"]}) == 4  # no distractor is the answer in another case
        assert all(c.startswith(" ") and f" {c[1:]} " in f" {doc} " for c in others)  # words of the same text


def test_task_manager_is_cached_and_skips_builtin_index(env):
    M._TASK_MANAGERS.clear()
    paths = [str(env["task_dir"])]
    tm1 = M.manager_for(["pydoc_mc"], paths)
    tm2 = M.manager_for(["pydoc_cloze", "pydoc_ppl"], paths)
    assert tm1 is tm2
    assert list(M._TASK_MANAGERS) == [(tuple(paths), False)]  # built-in tasks never indexed


def test_results_to_measurements_schema():
    res = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1,
                          "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A",
                          "perplexity,none": float("inf"), "perplexity_stderr,none": float("nan"),
                          "broken,none": "N/A"}},
        "higher_is_better": {"t": {"acc": True, "exact_match": True}},
        "n-samples": {"t": {"original": 10, "effective": 4}},
        "n-shot": {"t": 0},
    }
    out = {m.measure: m for m in M.results_to_measurements(res, {})}
    assert set(out) == {"acc", "exact_match_strict_match", "perplexity"}
    assert out["perplexity"].value == float("inf") and out["perplexity"].stderr is None
    assert out["acc"].stderr == 0.1 and out["acc"].n == 4 and out["acc"].task == "t"
    assert out["exact_match_strict_match"].stderr is None


def test_skips_without_tokenizer_or_hf_model(env, tmp_path):
    no_tok = CausalLMCheckpoint(CheckpointRef("x", "m", "s", 1), env["model"])
    (rec,) = LmEvalMetric().measure_checkpoint(_ctx(env, no_tok, tmp_path))
    assert rec.status == "skipped" and rec.message == M.SKIP_NO_TOKENIZER
    native = CausalLMCheckpoint(CheckpointRef("x", "m", "s", 1), torch.nn.Linear(3, 3), tokenizer=env["tok"])
    (rec,) = LmEvalMetric().measure_checkpoint(_ctx(env, native, tmp_path))
    assert rec.status == "skipped" and rec.message == M.SKIP_NOT_HF


@pytest.mark.parametrize(
    "kw, key",
    [({"tasks": []}, "tasks"), ({"limit": 0}, "limit"), ({"limit": 2.5}, "limit"), ({"batch_size": 0}, "batch_size"),
     ({"bootstrap_iters": -1}, "bootstrap_iters"), ({"num_fewshot": -1}, "num_fewshot"),
     ({"include_path": "/no/such/dir"}, "include_path"), ({"taks": ["x"]}, "taks")],
)
def test_bad_params(kw, key):
    with pytest.raises(ParameterError) as exc:
        LmEvalMetric(**kw)
    assert exc.value.key == key


def test_builtin_tasks_indexed_only_when_needed_and_once(env):
    """A built-in task name (Pythia's suite) needs lm-eval's own index: built once, then reused;
    an unknown name is a clear error with close matches."""
    M._TASK_MANAGERS.clear()
    paths = [str(env["task_dir"])]
    with pytest.raises(ValueError, match="pydoc_mcq.*did you mean: pydoc_mc"):
        M.manager_for(["pydoc_mcq"], paths)
    tm = M.manager_for(["lambada_openai", "pydoc_mc"], paths)
    assert "lambada_openai" in tm.all_tasks and "pydoc_mc" in tm.all_tasks
    assert M.manager_for(list(M.PYTHIA_TASKS), paths) is tm
    assert sorted(M._TASK_MANAGERS) == [(tuple(paths), False), (tuple(paths), True)]
    assert M.manager_for(["pydoc_ppl"], paths) is M._TASK_MANAGERS[(tuple(paths), False)]


def test_hydra_config_instantiates_and_names_agree():
    """conf/metric/lm_eval.yaml: wrapped in its name, _target_ = the entry point, params valid."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from harness.registry import metrics

    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parent.parent / "conf/metric/lm_eval.yaml"))
    node = cfg["lm_eval"]
    target = node.pop("_target_")
    assert metrics().target("lm_eval").replace(":", ".") == target
    assert metrics().get("lm_eval") is LmEvalMetric and LmEvalMetric.name == "lm_eval"
    m = LmEvalMetric(**node)
    assert m.tasks == list(M.DEFAULT_TASKS) and m.log_samples is False and m.bootstrap_iters == 1000
