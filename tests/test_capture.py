"""Capture (harness.capture) + the local_run family, checked against independent truths:

* the whole 8-sequence dataset is every update's batch (batch 4 x accumulation 2), so the loss
  logged for update k+1 and the train gradient stored at step k must equal the loss and the
  autograd gradient of the saved step-k model on the full dataset (brute force);
* the stored AdamW state at step k, one AdamW step with the stored train gradient, must give
  the saved weights at step k+1;
* the ``loss`` metric on the captured run must equal the same metric on in-memory snapshots
  of the model taken at the same steps by an independent callback (CausalLMCheckpoint);
* a crash mid-write leaves earlier checkpoints intact and the partial one ignored.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from harness import learning_dynamics as ld
from harness.api import CheckpointContext, ParameterError
from harness.capture import HarnessCallback, Schedule
from harness.capture import layout as L
from harness.lm import CausalLMCheckpoint, per_token_loss, random_token_batches, tiny_gpt_neox
from harness_plugins.models.local_run import LocalRunFamily

torch.set_num_threads(1)

VOCAB, SEQ = 64, 16
STEPS = 4


def dataset() -> torch.Tensor:
    return random_token_batches(VOCAB, 1, 8, SEQ, seed=1)[0]


def val_ids() -> torch.Tensor:
    return random_token_batches(VOCAB, 1, 4, SEQ, seed=2)[0]


class Snapshots(TrainerCallback):
    """Independent truth: copies of the weights at each pre-optimizer step (in memory)."""

    def __init__(self):
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.states[state.global_step] = copy.deepcopy(model.state_dict())

    def on_train_end(self, args, state, control, model=None, **kw):
        self.states[state.global_step] = copy.deepcopy(model.state_dict())


def train(out: Path, *, hidden: int = 32, steps: int = STEPS, callbacks=(), **cb_kw) -> HarnessCallback:
    model = tiny_gpt_neox(VOCAB, hidden=hidden, seed=0)
    ds = [{"input_ids": r, "labels": r} for r in dataset()]
    cb_kw.setdefault("schedule", Schedule(every=1, log_until=0))
    cb = HarnessCallback(out, val_batch=val_ids(), **cb_kw)
    args = TrainingArguments(
        output_dir=str(out.parent / f"trainer_{out.name}"), per_device_train_batch_size=4,
        gradient_accumulation_steps=2, max_steps=steps, learning_rate=3e-3, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=0, save_strategy="no", report_to=[], max_grad_norm=0.0,
        use_cpu=True, disable_tqdm=True, seed=0, logging_steps=1000,
    )
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb, *callbacks]).train()
    return cb


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture") / "run"
    snaps = Snapshots()
    train(root, callbacks=[snaps], optimizer_state=True)
    return root, snaps


def load_model(step_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(step_dir), dtype=torch.float32).eval()


# ---- schedules ----------------------------------------------------------------------------


def test_schedule_presets_match_published_grids():
    pythia = Schedule.preset("pythia").steps(143_000)
    assert len(pythia) == 154 and pythia[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert pythia[-1] == 143_000 and 1500 not in Schedule.preset("pythia")
    assert Schedule.preset("pico").steps(3500) == [0, 1000, 2000, 3000]
    assert Schedule.from_spec([3, 7]).steps(10) == [3, 7] and 0 not in Schedule.from_spec([3, 7])
    assert Schedule(every=50, log_until=32).steps(120) == [0, 1, 2, 4, 8, 16, 32, 50, 100]
    with pytest.raises(ParameterError, match="every"):
        Schedule(every=0)
    with pytest.raises(ParameterError, match="schedule"):
        Schedule.preset("nope")


# ---- what was written -------------------------------------------------------------------


def test_layout_and_metadata(captured):
    root, _ = captured
    assert L.complete_steps(root) == [0, 1, 2, 3, 4] and L.partial_steps(root) == []
    man = L.read_json(root / L.RUN_MANIFEST)
    assert man["model_type"] == "gpt_neox" and man["n_params"] > 0
    assert set(man["gradient_modules"]) == {f"layers.{i}.{m}" for i in range(2) for m in
                                            ("attention.query_key_value", "attention.dense", "mlp.dense_4h_to_h")}
    info = [L.read_json(L.step_dir(root, s) / L.STEP_META) for s in range(5)]
    assert [i["tokens_seen"] for i in info] == [s * 8 * SEQ for s in range(5)]
    lrs = [i["learning_rate"] for i in info[:4]]
    assert lrs == pytest.approx([3e-3 * (1 - s / STEPS) for s in range(4)])  # linear decay, no warmup
    assert info[4]["final"] and not info[4]["train_gradients"]
    log = L.read_loss_log(root)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["tokens_seen"] for r in log] == [s * 8 * SEQ for s in range(1, 5)]


def test_loss_log_and_train_gradients_are_the_full_batch_truth(captured):
    root, _ = captured
    data = dataset()
    log = {r["step"]: r["loss"] for r in L.read_loss_log(root)}
    man = L.read_json(root / L.RUN_MANIFEST)
    for step in range(STEPS):
        model = load_model(L.step_dir(root, step))
        params = dict(model.named_parameters())
        loss = per_token_loss(model(input_ids=data).logits, data).mean()
        assert log[step + 1] == pytest.approx(float(loss.detach()), rel=1e-5)
        keys = sorted(man["gradient_modules"])
        grads = torch.autograd.grad(loss, [params[man["gradient_modules"][k]] for k in keys])
        stored = ld.StepDynamics(L.step_dir(root, step) / ld.LD_DIRNAME, normalise_gradients=False).get("train", "gradients")
        for k, g in zip(keys, grads):
            torch.testing.assert_close(stored[ld.parse_key(k)], g, rtol=1e-4, atol=1e-7)


def test_val_gradients_and_losses_recomputed(captured):
    root, _ = captured
    val = val_ids()
    man = L.read_json(root / L.RUN_MANIFEST)
    from safetensors.torch import load_file

    for step in (0, 4):
        sd = L.step_dir(root, step)
        model = load_model(sd)
        params = dict(model.named_parameters())
        tok = per_token_loss(model(input_ids=val).logits, val)
        torch.testing.assert_close(load_file(str(sd / L.VAL_LOSSES))["loss"], tok.detach(), rtol=1e-5, atol=1e-6)
        key = "layers.1.mlp.dense_4h_to_h"
        (g,) = torch.autograd.grad(tok.mean(), [params[man["gradient_modules"][key]]])
        stored = ld.load_file(sd / ld.LD_DIRNAME / "val_gradients.pt")[key]
        torch.testing.assert_close(stored, g, rtol=1e-4, atol=1e-7)


def test_stored_optimizer_state_reproduces_the_next_weights(captured):
    """AdamW from the stored state + stored train gradient at step k == saved weights at k+1."""
    root, _ = captured
    fam = LocalRunFamily(root=str(root))
    refs = {r.step: r for r in fam.checkpoints()}
    name = "gpt_neox.layers.0.mlp.dense_4h_to_h.weight"
    for step in (1, 2):
        ck = fam.load(refs[step])
        state = ck.optimizer_state()
        assert state["optimizer"] == "AdamW"
        (group,) = [g for g in state["state_dict"]["param_groups"] if name in g["param_names"]]
        idx = group["params"][group["param_names"].index(name)]
        p = torch.nn.Parameter(dict(ck.model.named_parameters())[name].detach().clone())
        hyper = {k: group[k] for k in ("lr", "betas", "eps", "weight_decay", "amsgrad")}
        opt = torch.optim.AdamW([p], **hyper)
        opt.load_state_dict({"state": {0: state["state_dict"]["state"][idx]},
                             "param_groups": [{**hyper, "params": [0]}]})
        p.grad = dict(ck.field("train_gradients", ["layers.0.mlp.dense_4h_to_h"]))["layers.0.mlp.dense_4h_to_h"]
        assert hyper["lr"] == pytest.approx(refs[step].learning_rate)
        opt.step()
        nxt = dict(load_model(L.step_dir(root, step + 1)).named_parameters())[name]
        torch.testing.assert_close(p.detach(), nxt.detach(), rtol=1e-5, atol=1e-7)


# ---- the family ------------------------------------------------------------------------


def test_family_fields_history_and_loss_metric_agree_with_direct_checkpoints(captured):
    from harness_plugins.metrics.loss import LossMetric

    root, snaps = captured
    fam = LocalRunFamily(root=str(root))
    refs = sorted(fam.checkpoints(), key=lambda r: r.step)
    assert [r.step for r in refs] == [0, 1, 2, 3, 4] and {r.size for r in refs} == {"32"}
    metric = LossMetric()
    for prev, ref in zip([None, *refs[:-1]], refs):
        ck = fam.load(ref)
        ck.previous = prev
        direct_model = tiny_gpt_neox(VOCAB, hidden=32)
        direct_model.load_state_dict(snaps.states[ref.step])
        direct = CausalLMCheckpoint(ref, direct_model, batches=[val_ids()])
        a = {m.measure: m.value for m in metric.measure_checkpoint(CheckpointContext({}, root, 0, ck))}
        b = {m.measure: m.value for m in metric.measure_checkpoint(CheckpointContext({}, root, 0, direct))}
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["logit_std"] == pytest.approx(b["logit_std"], rel=1e-6)
        assert ck.data_fingerprint == direct.data_fingerprint.__class__(ck.data_fingerprint)  # stable str
        if prev is not None:
            kinds = ck.field_kinds()
            assert "delta" in kinds
            name = "gpt_neox.layers.1.attention.dense.weight"
            (n, d), = list(ck.field("delta", [name]))
            truth = snaps.states[ref.step][name] - snaps.states[prev.step][name]
            torch.testing.assert_close(d, truth, rtol=0, atol=1e-7)
        if ref.step == 4:
            with pytest.raises(ld.NotStoredError):
                list(ck.field("gradient"))
            assert "gradient" not in ck.field_kinds()
        else:
            assert len(list(ck.field("gradient"))) == 6 and len(list(ck.field("val_gradients", ["*.dense"]))) == 2
    hist = fam.history(refs[0].model_id)
    assert list(hist["step"]) == [1, 2, 3, 4] and {"loss", "learning_rate", "tokens_seen"} <= set(hist.columns)


def test_family_parameter_errors(tmp_path):
    with pytest.raises(ParameterError, match="root"):
        LocalRunFamily(root=None)
    with pytest.raises(ParameterError, match="bogus"):
        LocalRunFamily(root=str(tmp_path), bogus=1)
    with pytest.raises(L.CaptureFormatError, match="neither"):
        list(LocalRunFamily(root=str(tmp_path)).checkpoints())


# ---- atomicity -------------------------------------------------------------------------


def test_crash_mid_write_leaves_previous_checkpoints_and_is_ignored(tmp_path, monkeypatch):
    real = ld.write_split

    def crash(directory, split, data):
        if "step_2" in str(directory) and split == "val":
            real(directory, split, data)  # half the checkpoint is on disk
            raise KeyboardInterrupt("simulated crash mid-write")
        return real(directory, split, data)

    monkeypatch.setattr(ld, "write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "run")
    root = tmp_path / "run"
    assert L.complete_steps(root) == [0, 1] and L.partial_steps(root) == [2]
    fam = LocalRunFamily(root=str(root))
    assert [r.step for r in fam.checkpoints()] == [0, 1]
    ck = fam.load(next(r for r in fam.checkpoints() if r.step == 1))
    assert len(list(ck.field("gradient"))) == 6  # the earlier checkpoint is intact


# ---- suites, precision, import weight ----------------------------------------------------


def test_suite_of_two_sizes_has_aligned_steps(tmp_path):
    from harness.capture.recorder import Recorder

    suite = tmp_path / "suite"
    for h in (16, 32):
        model = tiny_gpt_neox(VOCAB, hidden=h)
        rec = Recorder(suite / f"h{h}", val_batch=val_ids(), suite=suite, size=f"h{h}", model_id=f"tiny-h{h}")
        rec.start(model)
        for step in (0, 1):
            rec.write_checkpoint(step, model, train_grads=None, learning_rate=1e-3, tokens_seen=step * 128)
    man = L.read_json(suite / L.SUITE_MANIFEST)
    assert [r["model_id"] for r in man["runs"]] == ["tiny-h16", "tiny-h32"]
    refs = list(LocalRunFamily(root=str(suite)).checkpoints())
    by_size: dict[str, list[int]] = {}
    for r in refs:
        by_size.setdefault(r.size, []).append(r.step)
    assert by_size == {"h16": [0, 1], "h32": [0, 1]}
    assert {r.n_params for r in refs if r.size == "h16"} == {sum(p.numel() for p in tiny_gpt_neox(VOCAB, hidden=16).parameters())}
    assert [r.size for r in LocalRunFamily(root=str(suite), size="h16").checkpoints()] == ["h16", "h16"]


def test_half_precision_model_is_stored_as_fp32(tmp_path):
    from harness.capture.recorder import Recorder

    model = tiny_gpt_neox(VOCAB).to(torch.bfloat16)
    rec = Recorder(tmp_path / "run", val_batch=val_ids(), schedule=[0])
    rec.start(model)
    rec.write_checkpoint(0, model, train_grads=None, learning_rate=None, tokens_seen=0)
    from safetensors import safe_open

    with safe_open(str(L.step_dir(tmp_path / "run", 0) / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    g = ld.load_file(L.step_dir(tmp_path / "run", 0) / ld.LD_DIRNAME / "val_gradients.pt")
    assert {t.dtype for t in g.values()} == {torch.float32}


def test_import_harness_capture_stays_light():
    code = "import sys, harness, harness.capture; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
