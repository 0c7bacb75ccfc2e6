"""The Pythia family and the pythia_mini builder, on a tiny suite built once per session.

Independent truths: AdamW's first step (sign update: |delta + lr*wd*theta0| = lr), full models
loaded with ``from_pretrained`` and subtracted, gradients recomputed with ``torch.autograd``
from HF's own loss, hashlib over the files, the builder's own training log, and a Hugging Face
cache laid out by hand (blobs named by sha256) for the Hub code path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
import torch

from harness.api import ParameterError
from harness_plugins.models.pythia import PythiaFamily
from harness_plugins.models.pythia import schedule as S
from harness_plugins.models.pythia.build import DEFAULTS, build, save_steps
from harness.weights import CheckpointFileError

torch.set_num_threads(1)

MINI = {"sizes": ["xs", "s"], "steps": 8, "checkpoint_every": 4, "seq_len": 32, "batch_size": 4,
        "vocab_size": 300, "probe_batch_size": 4, "data": {"name": "pydoc", "max_docs": 20}}
DATA = {"name": "pydoc", "max_docs": 20, "seq_len": 32, "batch_size": 4, "n_batches": 2}


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> Path:
    return build(cache_dir=str(tmp_path_factory.mktemp("mini")), **MINI)


def family(root, **kw) -> PythiaFamily:
    return PythiaFamily(source="local", root=str(root), data=DATA, **kw)


def by_step(fam, model_id="pythia-mini-xs"):
    return {r.step: r for r in fam.checkpoints() if r.model_id == model_id}


def hf_model(step_dir):
    from transformers import GPTNeoXForCausalLM

    return GPTNeoXForCausalLM.from_pretrained(str(step_dir)).eval()


def file_state(step_dir) -> dict[str, torch.Tensor]:
    """Parameters of a from_pretrained model under the names the files use."""
    sd = hf_model(step_dir).state_dict()
    return {("embed_out.weight" if k == "lm_head.weight" else k): v for k, v in sd.items() if "rotary" not in k}


# ---- builder --------------------------------------------------------------------------
def test_build_layout_schedule_and_cache(suite):
    info = json.loads((suite / "suite.json").read_text())
    assert info["complete"] and info["models"] == ["pythia-mini-xs", "pythia-mini-s"]
    assert save_steps(8, 4) == [0, 1, 2, 4, 8] and save_steps(100, 40) == [0, 1, 2, 4, 8, 16, 32, 40, 80, 100]
    orders = set()
    for size in ("xs", "s"):
        mdir = suite / f"pythia-mini-{size}"
        mi = json.loads((mdir / "model_info.json").read_text())
        assert mi["steps"] == [0, 1, 2, 4, 8]
        assert sorted(int(p.name[4:]) for p in mdir.glob("step*")) == mi["steps"]
        for step in mi["steps"]:
            names = {p.name for p in (mdir / f"step{step}").iterdir()}
            assert {"config.json", "model.safetensors", "tokenizer.json", "probe_gradients.safetensors",
                    "probe.json"} <= names
        cfg = json.loads((mdir / "step0" / "config.json").read_text())
        assert cfg["use_parallel_residual"] and not cfg["tie_word_embeddings"]
        assert cfg.get("rotary_pct", cfg.get("partial_rotary_factor")) == 0.25 or \
            cfg.get("rope_parameters", {}).get("partial_rotary_factor") == 0.25
        log = [json.loads(line) for line in (mdir / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == list(range(1, 9))
        for r in log:  # the applied lr is the documented schedule
            assert r["learning_rate"] == pytest.approx(S.lr_at(r["step"], mi["lr"], 8, mi["warmup_steps"], 0.1))
            assert r["tokens_seen"] == r["step"] * 4 * 32
        orders.add(mi["data_order_fingerprint"])
    assert len(orders) == 1  # same data order for every size
    stamp = (suite / "suite.json").stat().st_mtime_ns
    t = time.time()
    assert build(cache_dir=str(suite.parent), **MINI) == suite  # cached: no rebuild
    assert time.time() - t < 2 and (suite / "suite.json").stat().st_mtime_ns == stamp


def test_builder_rejects_bad_params(tmp_path):
    with pytest.raises(ParameterError, match="sizes"):
        build(cache_dir=str(tmp_path), sizes=["huge"])
    with pytest.raises(ParameterError, match="steps"):
        build(cache_dir=str(tmp_path), steps=0)
    with pytest.raises(ParameterError, match="colour"):
        build(cache_dir=str(tmp_path), colour="red")
    assert set(DEFAULTS["sizes"]) == {"xs", "s", "m", "l"}  # >= 4 sizes by default


# ---- listing and loading ----------------------------------------------------------------
def test_listing_facts(suite):
    fam = family(suite)
    refs = fam.checkpoints()
    assert len(refs) == 10 and {r.size for r in refs} == {"xs", "s"}
    log = {r["step"]: r for r in map(json.loads, (suite / "pythia-mini-xs" / "train_log.jsonl").read_text().splitlines())}
    for step, ref in by_step(fam).items():
        assert ref.revision == f"step{step}" and ref.tokens_seen == step * 4 * 32
        if step:
            assert ref.learning_rate == pytest.approx(log[step]["learning_rate"])
    ref = by_step(fam)[8]
    assert ref.n_params == sum(p.numel() for p in hf_model(suite / "pythia-mini-xs" / "step8").parameters())
    assert len(family(suite, size="s").checkpoints()) == 5
    assert len(family(suite, models=["*-xs"], revisions=["step0", 8]).checkpoints()) == 2
    hist = fam.history("pythia-mini-xs")
    assert list(hist["step"]) == list(range(1, 9)) and hist["loss"].iloc[0] == pytest.approx(log[1]["loss"])


def test_eval_loss_and_fingerprint(suite):
    fam = family(suite)
    refs = by_step(fam)
    c0, c8 = fam.load(refs[0]), fam.load(refs[8])
    assert c0.data_fingerprint == c8.data_fingerprint
    b0, b8 = c0.eval_batches("val"), c8.eval_batches("val")
    assert len(b0) == 2 and all(torch.equal(x, y) for x, y in zip(b0, b8)) and b0[0].shape == (4, 32)
    model = hf_model(suite / "pythia-mini-xs" / "step8")
    with torch.no_grad():
        want = model(input_ids=b8[0], labels=b8[0]).loss
        got = c8.per_example_loss(b8[0]).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # the batches are pydoc text in the suite's own tokenizer (lossless byte-level BPE)
    import pydoc_data.topics as T

    corpus = "<|endoftext|>".join(T.topics[k] for k in sorted(T.topics)[:20])
    assert c8.tokenizer.decode(b8[0][0]) in corpus


def test_first_adam_step_closed_form(suite):
    """AdamW's first update is -lr * (g / (|g| + eps) + wd * theta0) for decayed (matrix) tensors:
    |delta + lr*wd*theta0| = lr wherever |g| >> eps, and never more."""
    fam = family(suite)
    refs = by_step(fam)
    fam.load(refs[0])
    c1 = fam.load(refs[1])
    assert c1.field_meta("delta") == {"from_step": 0, "to_step": 1, "step_gap": 1}
    mi = json.loads((suite / "pythia-mini-xs" / "model_info.json").read_text())
    lr1 = S.lr_at(1, mi["lr"], mi["total_steps"], mi["warmup_steps"], mi["min_lr_ratio"])
    theta0 = dict(fam.load(refs[0]).field("weights", "matrices"))
    fam.load(refs[1])  # restore the previous-selected pointer (0 -> 1)
    n = 0
    for name, d in c1.field("delta", "matrices"):
        r = ((d + lr1 * 0.1 * theta0[name]) / lr1).abs()
        if name == "gpt_neox.embed_in.weight":  # rows of tokens absent from batch 1: g = 0, decay only
            assert (((r - 1).abs() < 1e-2) | (r < 1e-2)).float().mean() > 0.99
            assert ((r - 1).abs() < 1e-2).any(dim=1).sum() > 10
            continue
        # |g| / (|g| + eps): exactly 1 up to Adam's eps, which matters only for tiny gradients
        assert r.max() <= 1 + 1e-4, name
        assert (r - 1).abs().median() < 1e-2, name
        assert ((r - 1).abs() < 5e-2).float().mean() > 0.8, name
        n += 1
    assert n == 1 + 4 * 2  # embed_out + 4 matrices per layer x 2 layers (embed_in checked apart)


def test_delta_equals_full_model_difference(suite):
    fam = family(suite, revisions=[2, 4])
    refs = by_step(fam)
    fam.load(refs[2])
    c4 = fam.load(refs[4])
    assert c4.previous.step == 2
    a, b = file_state(suite / "pythia-mini-xs" / "step2"), file_state(suite / "pythia-mini-xs" / "step4")
    got = dict(c4.field("delta", "all"))
    assert set(got) == set(a)
    for name in a:
        assert torch.equal(got[name], b[name] - a[name]), name
    # the pico set: value rows of qkv, attention.dense, dense_4h_to_h
    pico = dict(c4.field("delta"))
    w = b["gpt_neox.layers.1.attention.query_key_value.weight"] - a["gpt_neox.layers.1.attention.query_key_value.weight"]
    assert torch.equal(pico["gpt_neox.layers.1.attention.value.weight"], w.view(4, 3, 8, 32)[:, 2].reshape(32, 32))
    assert len(pico) == 6
    first = fam.load(by_step(family(suite))[0])
    assert "delta" not in first.field_kinds()
    with pytest.raises(NotImplementedError, match="first selected checkpoint"):
        list(first.field("delta"))


def test_gradient_stored_matches_recomputed(suite):
    fam = family(suite)
    ckpt = fam.load(by_step(fam)[4])
    stored = dict(ckpt.field("gradient", "all"))
    assert ckpt.field_meta("gradient")["source"] == "stored"
    probe = json.loads((suite / "pythia-mini-xs" / "step4" / "probe.json").read_text())
    ids = torch.tensor(probe["input_ids"])
    model = hf_model(suite / "pythia-mini-xs" / "step4")
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, list(params.values()))
    want = {("embed_out.weight" if k == "lm_head.weight" else k): g for k, g in zip(params, grads)}
    assert set(stored) == set(want)
    for name, g in want.items():
        assert torch.allclose(stored[name], g, rtol=1e-4, atol=1e-7), name
    recomputed, loss = ckpt.compute_probe_gradients()
    assert loss == pytest.approx(probe["loss"], rel=1e-5)
    assert all(torch.allclose(recomputed[k], want[k], rtol=1e-4, atol=1e-7) for k in want)


# ---- integrity and bad input ------------------------------------------------------------
@pytest.fixture
def copy(suite, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(suite / "pythia-mini-xs", root / "pythia-mini-xs")
    return root


def test_weights_hash_and_duplicates(copy, caplog):
    shutil.copytree(copy / "pythia-mini-xs" / "step4", copy / "pythia-mini-xs" / "step6")  # same weights, new name
    fam = family(copy)
    refs = by_step(fam)
    with caplog.at_level(logging.WARNING):
        for s in (4, 6):
            fam.load(refs[s])
    want = hashlib.sha256((copy / "pythia-mini-xs" / "step4" / "model.safetensors").read_bytes()).hexdigest()
    assert refs[4].meta["weights_sha"] == refs[6].meta["weights_sha"] == want
    assert fam.describe()["duplicate_weights"] == [{"model_id": "pythia-mini-xs", "steps": [4, 6], "weights_sha": want}]
    assert "identical weights" in caplog.text
    assert refs[6].meta["warning"].startswith("identical weights to step4")  # copied into records


def test_missing_revision(copy):
    """A revision the builder promised (model_info.json) but that is gone stays listed, so it
    becomes an error record (before: it vanished from the listing with a log line)."""
    shutil.rmtree(copy / "pythia-mini-xs" / "step2")
    fam = family(copy)
    refs = by_step(fam)
    assert 2 in refs and fam.describe()["missing_revisions"] == {"pythia-mini-xs": ["step2"]}
    with pytest.raises(CheckpointFileError, match=r"step2: revision step2 of pythia-mini-xs is missing"):
        fam.load(refs[2])


def test_missing_config_is_an_error_record_in_the_status_table(copy):
    """Issue 15 case 4. Before: a step directory without config.json disappeared from the
    checkpoint list (only a log line); now the sweep writes `error` records naming the file,
    the other checkpoints are measured, and the status table counts the errors."""
    from harness import store
    from harness.report.html import status_table
    from harness.runner import Runner, RunSpec

    (copy / "pythia-mini-xs" / "step4" / "config.json").unlink()
    spec = RunSpec(model_name="pythia", model={"source": "local", "root": str(copy), "size": None},
                   metrics={"loss": {}}, data={}, checkpoints={}, run_dir=copy.parent / "run",
                   run_root=copy.parent / "run", progress="off", report=False)
    summary = Runner(spec).run()
    frame = store.load_results(spec.run_root)
    err = frame[frame["status"] == "error"]
    assert summary.error == len(err) > 0 and set(err["step"]) == {4}
    assert err["message"].str.contains(r"step4.*no config\.json", regex=True).all()
    assert set(frame[frame["status"] == "ok"]["step"]) >= {2, 8}
    table = status_table(frame).data
    row = table[table["metric"] == "loss"].iloc[0]
    assert row["error"] == len(err) and "config.json" in row["first message"]


def test_truncated_weights(copy):
    f = copy / "pythia-mini-xs" / "step4" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    fam = family(copy)
    with pytest.raises(CheckpointFileError, match=r"step4/model.safetensors: truncated"):
        fam.load(by_step(fam)[4])
    fam.load(by_step(fam)[8])  # the others still load


def test_shape_change_between_checkpoints(copy, suite):
    shutil.rmtree(copy / "pythia-mini-xs" / "step8")
    shutil.copytree(suite / "pythia-mini-s" / "step8", copy / "pythia-mini-xs" / "step8")
    fam = family(copy)
    refs = by_step(fam)
    fam.load(refs[4])
    c8 = fam.load(refs[8])
    with pytest.raises(CheckpointFileError, match=r"shape of '.*' changed between checkpoints.*step4.*step8"):
        list(c8.field("delta"))


def test_bad_parameters(tmp_path):
    for kw, key in [({"size": "13m"}, "size"), ({"source": "ftp"}, "source"), ({"dtype": "int8"}, "dtype"),
                    ({"size": "14m", "deduped": True}, "deduped"), ({"source": "local"}, "root"),
                    ({"source": "local", "root": str(tmp_path / "nope")}, "root"),
                    ({"modules": "everything"}, "modules"), ({"revisions": ["latest"]}, "revisions"),
                    ({"probe_batch_size": 0}, "probe_batch_size")]:
        with pytest.raises(ParameterError, match=key):
            PythiaFamily(**kw)


# ---- the Hub path -----------------------------------------------------------------------
def test_hub_listing_and_offline_error(tmp_path):
    fam = PythiaFamily(size=["70m", "160m"], deduped=True, hf_cache_dir=str(tmp_path))
    refs = fam.checkpoints()
    assert len(refs) == 2 * 154 and refs[0].model_id == "EleutherAI/pythia-70m-deduped"
    r = [x for x in refs if x.model_id.endswith("160m-deduped") and x.step == 143000][0]
    assert r.tokens_seen == 299_892_736_000 and r.n_params == 162_322_944
    assert r.learning_rate == pytest.approx(6e-5)
    t = time.time()
    with pytest.raises(CheckpointFileError, match=r"pythia-70m-deduped@step0: config.json is not in the "
                                                  r"Hugging Face cache and HF_HUB_OFFLINE=1"):
        fam.load(refs[0])
    assert time.time() - t < 5


def fake_hf_cache(cache: Path, repo: str, revisions: dict[str, Path]) -> None:
    """Lay out the HF hub cache by hand: blobs named by sha256, refs/<branch> -> commit,
    snapshots/<commit>/<file> -> ../../blobs/<sha>."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    for branch, src in revisions.items():
        commit = hashlib.sha1(branch.encode()).hexdigest()
        (base / "refs" / branch).write_text(commit)
        snap = base / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in src.iterdir():
            if f.name.startswith("probe"):
                continue  # public Pythia has no probe gradients
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
            blob = base / "blobs" / sha
            if not blob.exists():
                shutil.copy(f, blob)
            (snap / f.name).symlink_to(Path("../../blobs") / sha)


def test_hub_path_through_the_cache(suite, tmp_path):
    cache = tmp_path / "hf"
    src = suite / "pythia-mini-xs"
    fake_hf_cache(cache, "EleutherAI/pythia-14m", {"step0": src / "step0", "step1": src / "step1"})
    fam = PythiaFamily(size="14m", revisions=[0, 1], hf_cache_dir=str(cache), data=DATA)
    refs = fam.checkpoints()
    c0 = fam.load(refs[0])
    c1 = fam.load(refs[1])
    want = hashlib.sha256((src / "step1" / "model.safetensors").read_bytes()).hexdigest()
    assert refs[1].meta["weights_sha"] == want  # the blob name: the Hub's LFS sha256, not re-hashed
    a, b = file_state(src / "step0"), file_state(src / "step1")
    for name, d in c1.field("delta", "all"):
        assert torch.equal(d, b[name] - a[name])
    # no stored probe gradients on the Hub: computed on demand on the fixed probe batch
    grads = dict(c1.field("gradient"))
    meta = c1.field_meta("gradient")
    assert meta["source"] == "computed" and meta["probe_fingerprint"] and len(grads) == 6
    assert c0.data_fingerprint == c1.data_fingerprint
    assert len(fam._data_cache) == 1  # tokenised once for both revisions (same tokenizer.json)
    missing = type(refs[1])(**{**refs[1].__dict__, "step": 2, "revision": "step2"})
    with pytest.raises(CheckpointFileError, match="step2: config.json is not in the Hugging Face cache"):
        fam.load(missing)


# ---- end to end, as a user runs it ------------------------------------------------------
def test_end_to_end_local_suite(suite, tmp_path):
    from conftest import run_harness

    import harness

    res = run_harness("model=pythia", "model.source=local", f"model.root={suite}", "data=pydoc",
                      "data.max_docs=20", "data.seq_len=32", "data.batch_size=4", "data.n_batches=1",
                      "metric=loss", f"results_dir={tmp_path}", "run_name=r", "print_config=false", "progress=off")
    assert res.returncode == 0, res.stderr[-2000:]
    df = harness.load_results(tmp_path / "r")
    loss = df[df.measure == "loss"]
    assert len(loss) == 10 and set(loss.status) == {"ok"}
    assert loss.weights_sha.nunique() == 10 and loss.data_fingerprint.nunique() == 1
    # a freshly initialised LM (std 0.02) predicts near-uniformly: loss ~ ln(vocab)
    init = loss[(loss.step == 0)].value
    assert ((init - torch.log(torch.tensor(300.0)).item()).abs() < 0.05).all()
    final = loss[loss.step == 8].set_index("model_id").value
    assert (final < init.max()).all()


def test_end_to_end_offline_hub_errors(tmp_path):
    from conftest import run_harness

    import harness

    res = run_harness("model=pythia", "model.size=70m", "checkpoints=list", "checkpoints.steps=[0,1000]",
                      "metric=loss", "model.published.join=false", f"results_dir={tmp_path}", "run_name=r", "print_config=false", "progress=off",
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf")}, timeout=120)
    assert res.returncode in (0, 1), res.stderr[-2000:]  # the run finishes; errors may set exit code 1
    df = harness.load_results(tmp_path / "r")
    assert sorted(df.step) == [0, 1000] and set(df.status) == {"error"}
    assert df.message.str.contains("not in the Hugging Face cache and HF_HUB_OFFLINE=1").all()


def test_build_command(tmp_path):
    from conftest import run_harness

    out = tmp_path / "suite"
    res = run_harness("suite=pythia_mini", f"out={out}", "sizes=[xs]", "steps=2", "checkpoint_every=2",
                      "seq_len=16", "batch_size=2", "vocab_size=280", "data.max_docs=5", module="harness.build")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in (out / "pythia-mini-xs").glob("step*")) == ["step0", "step1", "step2"]
    bad = run_harness("suite=pythia_mini", f"out={out}", "sizes=[giant]", module="harness.build")
    assert bad.returncode != 0 and "sizes" in (bad.stderr + bad.stdout)


def test_sharded_checkpoints(suite, tmp_path):
    src = suite / "pythia-mini-xs"
    for step in (4, 8):
        d = tmp_path / "pythia-mini-xs" / f"step{step}"
        hf_model(src / f"step{step}").save_pretrained(str(d), max_shard_size="40KB")
        for f in src.joinpath(f"step{step}").glob("tokenizer*"):
            shutil.copy(f, d / f.name)
        assert (d / "model.safetensors.index.json").exists() and len(list(d.glob("model-*.safetensors"))) > 1
    fam = family(tmp_path)
    refs = by_step(fam)
    fam.load(refs[4])
    c8 = fam.load(refs[8])
    a, b = file_state(src / "step4"), file_state(src / "step8")
    got = dict(c8.field("delta", "all"))
    assert set(got) == set(a) and all(torch.equal(got[n], b[n] - a[n]) for n in a)
    with torch.no_grad():
        batch = c8.eval_batches()[0]
        assert torch.allclose(c8.per_example_loss(batch), fam.load(by_step(family(suite))[8]).per_example_loss(batch))


def test_pytorch_bin_fallback(suite, tmp_path):
    """Revisions that ship only pytorch_model.bin (as pythia-12b's shards) load through the
    same family; delta equals the safetensors delta; a truncated .bin names the file."""
    src = suite / "pythia-mini-xs"
    for step in (4, 8):
        d = tmp_path / "pythia-mini-xs" / f"step{step}"
        d.mkdir(parents=True)
        for f in src.joinpath(f"step{step}").iterdir():
            if f.name != "model.safetensors" and not f.name.startswith("probe"):
                shutil.copy(f, d / f.name)
        torch.save(file_state(src / f"step{step}"), d / "pytorch_model.bin")
    fam = family(tmp_path)
    refs = by_step(fam)
    fam.load(refs[4])
    c8 = fam.load(refs[8])
    a, b = file_state(src / "step4"), file_state(src / "step8")
    assert all(torch.equal(d, b[n] - a[n]) for n, d in c8.field("delta", "all"))
    assert refs[8].meta["weights_sha"] == hashlib.sha256(
        (tmp_path / "pythia-mini-xs" / "step8" / "pytorch_model.bin").read_bytes()).hexdigest()
    f = tmp_path / "pythia-mini-xs" / "step4" / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointFileError, match=r"step4/pytorch_model.bin: corrupt or truncated"):
        fam.load(refs[4])
