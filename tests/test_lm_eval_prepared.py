"""lm_eval over a trajectory: tasks, documents, prompts, requests and tokens are built once per run,
and every checkpoint's scores are IDENTICAL to a bare ``simple_evaluate`` on that checkpoint.

Independent truth: lm-eval's own ``simple_evaluate(HFLM(model, tok), ...)``, called fresh for each
checkpoint (its own task manager, its own request building and tokenisation)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from harness_plugins.metrics.lm_eval import LmEvalMetric  # noqa: E402
from harness_plugins.metrics.lm_eval import data as D  # noqa: E402
from harness_plugins.metrics.lm_eval.demo import pydoc_tokenizer, tiny_lm  # noqa: E402
from harness_plugins.metrics.lm_eval.prepared import tokenizer_fingerprint  # noqa: E402

LIMIT = 10
TASKS = list(D.OFFLINE_TASKS)
COMPARED = ("results", "n-samples", "higher_is_better", "versions", "n-shot", "configs")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_eval_prepared")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf_datasets")
    tok = pydoc_tokenizer()
    tok2 = pydoc_tokenizer(vocab_size=384)  # another tokenizer: its token ids must not be reused
    return {"root": root, "tok": tok, "tok2": tok2, "task_dir": D.ensure_task_dir(root / "cache"),
            "models": [tiny_lm(tok, seed=0), tiny_lm(tok, seed=1), tiny_lm(tok2, seed=2)]}


def _bare(env, model, tok, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=4), tasks=TASKS, limit=LIMIT,
                           log_samples=False, task_manager=TaskManager(include_path=str(env["task_dir"]),
                                                                       include_defaults=False), **kw)


def test_every_checkpoint_scores_identical_to_simple_evaluate(env, monkeypatch):
    """Three checkpoints (two tokenizers) through ONE metric instance: requests built once, and
    each checkpoint's results equal a fresh simple_evaluate's exactly (bootstrap stderr too)."""
    import lm_eval.utils as U

    from harness_plugins.metrics.lm_eval import prepared as P

    metric = LmEvalMetric(tasks=TASKS, limit=LIMIT, batch_size=4, bootstrap_iters=20,
                          cache_dir=str(env["root"] / "cache"))
    builds = []
    real_init = P.PreparedTasks.__init__
    monkeypatch.setattr(P.PreparedTasks, "__init__", lambda self, *a, **k: (builds.append(1), real_init(self, *a, **k))[1])
    compiled = []
    real_from_string = U.env.from_string
    monkeypatch.setattr(U.env, "from_string", lambda *a, **k: (compiled.append(a[0]), real_from_string(*a, **k))[1])
    ours = [metric.evaluate(m, tok) for m, tok in zip(env["models"], [env["tok"], env["tok"], env["tok2"]])]
    assert builds == [1]  # tasks and requests built once for the whole run
    assert compiled == []  # the shipped offline tasks render no jinja template, not even once
    assert ours[0]["results"] != ours[1]["results"]  # different weights, different scores
    monkeypatch.setattr(U.env, "from_string", real_from_string)
    for got, m, tok in zip(ours, env["models"], [env["tok"], env["tok"], env["tok2"]]):
        ref = _bare(env, m, tok, bootstrap_iters=20)
        for key in COMPARED:
            assert got[key] == ref[key], key


def test_token_cache_is_keyed_by_tokenizer_content(env):
    a, b = env["tok"], env["tok2"]
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(pydoc_tokenizer())  # same files, same key
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)


def test_no_git_or_environment_shell_out(env, monkeypatch):
    """lm-eval's add_env_info (torch collect_env) and git hash are not called per checkpoint."""
    import lm_eval.evaluator as E
    import lm_eval.loggers.utils as LU

    def boom(*a, **k):
        raise AssertionError("environment/git shell-out during a checkpoint's evaluation")

    for mod in (E, LU):
        monkeypatch.setattr(mod, "add_env_info", boom)
        monkeypatch.setattr(mod, "get_git_commit_hash", boom)
    metric = LmEvalMetric(tasks=["pydoc_mc"], limit=4, batch_size=4, bootstrap_iters=0,
                          cache_dir=str(env["root"] / "cache"))
    out = metric.evaluate(env["models"][0], env["tok"])
    assert "pydoc_mc" in out["results"]
