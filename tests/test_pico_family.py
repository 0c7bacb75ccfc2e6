"""Pico family on a tiny pico_mini build: layout, stored dynamics vs independent autograd,
fields, read-once, last-step skip, delta, performance, Hub commit-title parsing, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from harness import learning_dynamics as ld
from harness.api import FieldUnavailable, ParameterError
from harness_plugins.models.pico import PicoFamily
from harness_plugins.models.pico.build import build
from harness_plugins.models.pico.hub import parse_commit_titles
from harness_plugins.models.pico.modeling import PicoDecoderForCausalLM
from harness_plugins.models.pico.run import learning_rate

torch.set_num_threads(1)

MINI = dict(widths=[8, 16], n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=300, seq_len=16, batch_size=4,
            steps=6, save_every=3, warmup=2, ld_batch_size=2, n_val=4, lr=1e-2)


@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    cache = tmp_path_factory.mktemp("pico_cache")
    return build(cache_dir=str(cache), **MINI), cache


@pytest.fixture()
def family(suite):
    root, _ = suite
    return PicoFamily(source="local", root=str(root), size=None,
                      data={"name": "default", "seq_len": 16, "batch_size": 2, "n_batches": 2})


def test_build_writes_pico_train_layout_and_is_reused(suite):
    root, cache = suite
    runs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert runs == ["pico-mini-d16-1", "pico-mini-d8-1"]
    run = root / "pico-mini-d8-1"
    assert (run / "training_config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0", "step_3", "step_6"]
    step3 = run / "checkpoints" / "step_3"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in step3.iterdir()}
    names = {p.name for p in (step3 / "learning_dynamics").iterdir()}
    assert {f"{s}_{k}.pt" for s in ld.SPLITS for k in ld.KINDS} <= names
    last = {p.name for p in (run / "checkpoints" / "step_6" / "learning_dynamics").iterdir()}
    assert last == {f"val_{k}.pt" for k in ld.KINDS}  # pico-train's last step: val only
    raw = torch.load(step3 / "learning_dynamics" / "val_gradients.pt", weights_only=True)
    assert "_forward_module.layers.0.attention.v_proj" in raw and len(raw) == 3
    res = json.loads((run / "eval_results" / "step_6.json").read_text())
    assert set(res) == {"pydoc"} and res["pydoc"] > 1
    # same parameters: the cached build is returned untouched
    before = (run / "checkpoints" / "step_0" / "model.safetensors").stat().st_mtime_ns
    assert build(cache_dir=str(cache), **MINI) == root
    assert (run / "checkpoints" / "step_0" / "model.safetensors").stat().st_mtime_ns == before


def test_stored_dynamics_equal_independent_autograd(suite):
    """val at step 3: gradient of the mean next-token loss over the whole val set (normalised),
    last-position module outputs, and the module weights, recomputed from the saved model."""
    root, cache = suite
    run = root / "pico-mini-d16-1"
    fam = PicoFamily(source="local", root=str(run), size=None)
    ref = next(r for r in fam.checkpoints() if r.step == 3)
    model = PicoDecoderForCausalLM.from_pretrained(run / "checkpoints" / "step_3")
    from harness_plugins.models.pico.build import _data

    _, train, val = _data({**__import__("harness_plugins.models.pico.build", fromlist=["DEFAULTS"]).DEFAULTS, **MINI},
                          cache)
    outs = {}
    mods = {n: m for n, m in model.pico_decoder.named_modules() if n.endswith(ld.DEFAULT_MODULES)}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o[:, -1].detach()))
             for n, m in mods.items()]
    logits = model(val[:, :-1]).logits
    F.cross_entropy(logits.transpose(1, 2), val[:, 1:]).backward()
    for h in hooks:
        h.remove()
    ckpt = fam.load(ref)
    grads = dict(ckpt.field("val_gradients"))
    acts = dict(ckpt.field("val_activations"))
    weights = dict(ckpt.field("val_weights"))
    assert set(grads) == {f"layers.0.{m}" for m in ld.DEFAULT_MODULES}
    for name, mod in mods.items():
        key = name.removeprefix("layers.0.")
        key = f"layers.0.{key}"
        assert torch.allclose(grads[key], mod.weight.grad, atol=1e-6, rtol=1e-4), key
        assert torch.allclose(acts[key], outs[name], atol=1e-5), key
        assert torch.equal(weights[key], mod.weight.detach())
    # train split at step 3 = the batch of update 3 -> 4, i.e. stream rows [3B, 4B)
    B = MINI["batch_size"]
    batch = train[torch.arange(3 * B, 4 * B) % train.shape[0]]
    model.zero_grad()
    F.cross_entropy(model(batch[:, :-1]).logits.transpose(1, 2), batch[:, 1:]).backward()
    g = dict(ckpt.field("gradient", ["*o_proj"]))
    assert list(g) == ["layers.0.attention.o_proj"]
    assert torch.allclose(g["layers.0.attention.o_proj"], mods["layers.0.attention.o_proj"].weight.grad, atol=1e-6, rtol=1e-4)


def test_refs_schedule_and_performance(family, suite):
    refs = list(family.checkpoints())
    assert {(r.size, r.step) for r in refs} == {(s, t) for s in ("d8", "d16") for t in (0, 3, 6)}
    r = next(r for r in refs if r.size == "d8" and r.step == 3)
    assert r.tokens_seen == 3 * MINI["batch_size"] * MINI["seq_len"]
    cfg = {"training": {"max_steps": 6, "optimization": {"lr": 1e-2, "lr_warmup_steps": 2}}}
    assert r.learning_rate == pytest.approx(1e-2 * (6 - 3) / (6 - 2)) == pytest.approx(learning_rate(3, cfg))
    assert learning_rate(1, cfg) == pytest.approx(0.5e-2)
    w = 8
    d = w
    assert r.n_params == 2 * 300 * d + (d * d + 2 * d * (d // 2) + d * d + 3 * d * 4 * d + 2 * d) + d
    ckpt = family.load(r)
    perf = ckpt.performance()
    stored = json.loads((suite[0] / "pico-mini-d8-1" / "eval_results" / "step_3.json").read_text())
    assert perf == stored
    # the stored perplexity is exp(mean CE) on the builder's val set: recompute it
    from harness_plugins.models.pico.build import DEFAULTS, _data

    _, _, val = _data({**DEFAULTS, **MINI}, suite[1])
    with torch.no_grad():
        ce = F.cross_entropy(ckpt.model(val[:, :-1]).logits.transpose(1, 2), val[:, 1:])
    assert math.exp(ce.item()) == pytest.approx(perf["pydoc"], rel=1e-5)
    hist = family.history(r.model_id)
    assert list(hist.step) == [0, 3, 6] and hist.loss.iloc[1] == pytest.approx(math.log(perf["pydoc"]))


def test_each_file_read_once_for_all_metrics(family):
    ref = next(r for r in family.checkpoints() if r.step == 3)
    ckpt = family.load(ref)
    for _metric in range(3):  # three metrics asking for overlapping fields
        list(ckpt.field("train_gradients"))
        list(ckpt.field("gradient", ["*w_2"]))
        list(ckpt.field("val_activations"))
        list(ckpt.field("train_activations"))
    # train gradients are normalised with the activation count, so activations are read too
    assert ckpt.dynamics.reads == {("train", "gradients"): 1, ("train", "activations"): 1,
                                   ("val", "activations"): 1}
    assert all(t.dtype == torch.float32 for _, t in ckpt.field("val_weights"))


def test_last_step_has_no_train_dynamics(family):
    ref = next(r for r in family.checkpoints() if r.step == 6)
    ckpt = family.load(ref)
    with pytest.raises(ld.NotStoredError, match="not stored at step 6"):
        ckpt.field("gradient")
    assert len(dict(ckpt.field("val_gradients"))) == 3


def test_delta_is_difference_of_checkpoints(family, suite):
    refs = sorted((r for r in family.checkpoints() if r.size == "d8"), key=lambda r: r.step)
    cur = family.load(refs[2])
    assert "delta" not in cur.field_kinds()  # listed only when it will yield
    with pytest.raises(FieldUnavailable, match="first selected checkpoint"):
        list(cur.field("delta"))
    cur.previous = refs[0]
    assert "delta" in cur.field_kinds()
    prev_model = PicoDecoderForCausalLM.from_pretrained(suite[0] / "pico-mini-d8-1" / "checkpoints" / "step_0")
    prev = dict(prev_model.named_parameters())
    deltas = dict(cur.field("delta"))
    assert set(deltas) == set(prev)
    for n, p in cur.model.named_parameters():
        assert torch.equal(deltas[n], p.detach() - prev[n].detach())
    assert any(d.abs().max() > 0 for d in deltas.values())


def test_eval_batches_and_loss(family):
    ckpt = family.load(next(iter(family.checkpoints())))
    b = ckpt.eval_batches("val")[0]
    assert b.shape == (2, 16)
    loss = ckpt.per_example_loss(b)
    assert loss.shape == (2, 15) and torch.isfinite(loss).all()
    assert ckpt.data_fingerprint and ckpt.tokenizer is not None


def test_missing_and_truncated_model_files(tmp_path, suite):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(suite[0] / "pico-mini-d8-1", run, symlinks=True)
    fam = PicoFamily(source="local", root=str(run), size=None)
    refs = {r.step: r for r in fam.checkpoints()}
    (run / "checkpoints" / "step_0" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="step_0/model.safetensors"):
        fam.load(refs[0])
    p = run / "checkpoints" / "step_3" / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="step_3"):
        fam.load(refs[3])
    (run / "checkpoints" / "step_6" / "learning_dynamics" / "val_gradients.pt").write_bytes(b"\x80\x02junk")
    ckpt = fam.load(refs[6])
    with pytest.raises(ld.LearningDynamicsError, match="val_gradients.pt"):
        ckpt.field("val_gradients")


def test_parameters_are_checked(tmp_path):
    with pytest.raises(ParameterError, match="source"):
        PicoFamily(source="s3")
    with pytest.raises(ParameterError, match="size"):
        PicoFamily(size="huge")
    with pytest.raises(ParameterError, match="colour"):
        PicoFamily(colour="red")
    with pytest.raises(FileNotFoundError, match="not found"):
        PicoFamily(source="local", root=str(tmp_path / "nope")).prepare()
    with pytest.raises(ParameterError, match="widths"):
        build(widths=[6], n_heads=4)


# titles exactly as pico-train writes them (research note 1.4), newest first like list_repo_commits
RECORDED = [
    ("f9", "pico-decoder-tiny-1 trained to 125k steps"),
    ("e8", "Saving Learning Dynamics Data (val) -- Step 2000"),
    ("e7", "Saving Evaluation Results -- Step 2000"),
    ("e6", "Saving Fabric Checkpoint -- Step 2000"),
    ("e5", "Saving HF Model -- Step 2000"),
    ("d5", "Saving Learning Dynamics Data (val) -- Step 1000"),
    ("d4", "Saving Learning Dynamics Data (train) -- Step 1000"),
    ("d3", "Saving Evaluation Results -- Step 1000"),
    ("d2", "Saving Fabric Checkpoint -- Step 1000"),
    ("d1", "Saving HF Model -- Step 1000"),
    ("c0", "Saving HF Model -- Step 1000"),   # an earlier, superseded save of the same step
    ("b4", "Saving Learning Dynamics Data (val) -- Step 0"),
    ("b3", "Saving Learning Dynamics Data (train) -- Step 0"),
    ("b2", "Saving HF Model -- Step 0"),
    ("b1", "Saving Training Config -- Step 0"),
    ("b0", "Saving Tokenizer -- Step 0"),
    ("a0", "initial commit"),
]


def test_commit_titles_to_steps():
    steps = parse_commit_titles(RECORDED)
    assert sorted(steps) == [0, 1000, 2000]
    assert (steps[1000].model, steps[1000].train, steps[1000].val, steps[1000].eval) == ("d1", "d4", "d5", "d3")
    assert steps[1000].revision == "d5"
    assert steps[2000].train is None and steps[2000].revision == "e8"  # last step: val only
    assert steps[0].revision == "b4"
    only_model = parse_commit_titles([("x", "Saving HF Model -- Step 5")])
    assert only_model[5].revision == "x"
    assert parse_commit_titles([("y", "Saving Learning Dynamics Data (val) -- Step 7")]) == {}


def test_lm_eval_hflm_scores_match_brute_force(family):
    """lm-eval's HFLM accepts the native model; its loglikelihood equals a direct sum of log-probs."""
    HFLM = pytest.importorskip("lm_eval.models.huggingface").HFLM
    from lm_eval.api.instance import Instance

    ckpt = family.load(next(r for r in family.checkpoints() if r.step == 6))
    lm = HFLM(pretrained=ckpt.model, tokenizer=ckpt.tokenizer, batch_size=2, max_length=16)
    pairs = [("The quick brown", " fox"), ("def f(x):", " return x")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    for (ctx, cont), (ll, _greedy) in zip(pairs, got):
        full = ckpt.tokenizer(ctx + cont, return_tensors="pt").input_ids
        n_ctx = ckpt.tokenizer(ctx, return_tensors="pt").input_ids.shape[1]
        with torch.no_grad():
            lp = torch.log_softmax(ckpt.model(full).logits[0], -1)
        want = sum(lp[i - 1, full[0, i]].item() for i in range(n_ctx, full.shape[1]))
        assert ll == pytest.approx(want, abs=1e-4)
