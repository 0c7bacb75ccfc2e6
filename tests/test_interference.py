"""Tests of the interference metric against independent truths: closed forms, brute-force
per-example gradients, hand-computed optimiser steps and i.i.d. noise."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.api import Checkpoint, CheckpointContext, CheckpointRef, PairContext, ParameterError
from harness.lm import CausalLMCheckpoint, random_token_batches, tiny_gpt_neox
from harness_plugins.metrics.interference import InterferenceMetric
from harness_plugins.metrics.interference.opposition import find_targets, opposition
from opposition_oracles import opposition_loop, opposition_per_position, opposition_vmap
from harness_plugins.metrics.interference.stats import interference_stats

torch.set_num_threads(1)


# ---- fixtures ---------------------------------------------------------------------------


class LinearRegressionCheckpoint(Checkpoint):
    """y = w.x, per-example squared error (B,): everything about it can be done by hand."""

    def __init__(self, ref, w, splits, state=None):
        super().__init__(ref)
        self._model = torch.nn.Linear(w.shape[0], 1, bias=False).double()
        with torch.no_grad():
            self._model.weight.copy_(torch.as_tensor(w).view(1, -1))
        self._splits, self._state = splits, state

    @property
    def model(self):
        return self._model

    def eval_batches(self, split="val"):
        if split not in self._splits:
            raise NotImplementedError(f"no split {split!r}")
        return self._splits[split]

    def per_example_loss(self, batch, model=None):
        x, y = batch
        return ((model or self._model)(x).squeeze(-1) - y) ** 2

    def optimizer_state(self):
        return self._state


def _regression_data(seed=0, d=5, n=12):
    g = np.random.default_rng(seed)
    mk = lambda: (torch.tensor(g.normal(size=(n, d))), torch.tensor(g.normal(size=n)))  # noqa: E731
    return g.normal(size=d), {"train": [mk()], "val": [mk(), mk()]}


def _ref(step=0, lr=0.1, model_id="run"):
    return CheckpointRef("test", model_id, "s", step, learning_rate=lr)


def _by(ms, measure, task=None, layer=None):
    hits = [m for m in ms if m.measure == measure and m.task == task and m.layer == layer]
    assert len(hits) == 1, (measure, task, layer, [(m.measure, m.task, m.layer) for m in ms])
    return hits[0]


@pytest.fixture(scope="module")
def neox():
    model = tiny_gpt_neox(vocab_size=64, hidden=32, layers=2).double()
    batches = random_token_batches(64, 2, 3, 9, seed=1)
    return CausalLMCheckpoint(_ref(), model, batches, splits={"train": random_token_batches(64, 1, 4, 9, seed=2)})


# ---- D, M, |dL|: closed forms -------------------------------------------------------------


@pytest.mark.parametrize("x, d", [([1, -1], 1.0), ([1, 2, 3], 0.0), ([3, -1], 0.5), ([-2, -5], 0.0)])
def test_D_closed_forms(x, d):
    assert interference_stats(x).D == pytest.approx(d, abs=1e-15)


def test_D_of_zero_is_nan_and_becomes_a_skipped_record():
    s = interference_stats(torch.zeros(7))
    assert math.isnan(s.D) and s.M == 0 and s.N == 7
    ms = InterferenceMetric._loss_measures(s, "pair", "val", {})
    d = _by(ms, "D_dl_pair", "val")
    assert d.status == "skipped" and "undefined" in d.message
    assert _by(ms, "M_dl_pair", "val").value == 0


def test_identity_mean_equals_one_minus_D_times_M():
    x = np.random.default_rng(3).normal(0.1, 1.0, size=1001)
    s = interference_stats(x)
    assert abs(x.mean()) == pytest.approx((1 - s.D) * s.M, rel=1e-12)
    assert s.dL == pytest.approx(abs(x.mean()), rel=1e-12) and s.M == pytest.approx(np.abs(x).mean())


@pytest.mark.parametrize("n", [100, 10_000])
def test_gaussian_noise_matches_the_null_baseline(n):
    g = np.random.default_rng(n)
    vals = [(1 - interference_stats(g.normal(size=n)).D) * math.sqrt(n) for _ in range(200)]
    # E|sum x| / E sum|x| = sqrt(2/pi) sqrt(N) sigma / (N sqrt(2/pi) sigma) = 1/sqrt(N)
    assert 0.85 <= float(np.mean(vals)) <= 1.15
    assert interference_stats(g.normal(size=n)).D_null == pytest.approx(1 - 1 / math.sqrt(n))


def test_non_finite_changes_are_refused():
    with pytest.raises(ValueError, match="not finite"):
        interference_stats([1.0, float("nan")])


# ---- gradient opposition: fast paths vs brute force ------------------------------------------


@pytest.mark.parametrize("example", ["sequence", "token"])
def test_opposition_matches_brute_force_on_neox(neox, example):
    targets, uncovered = find_targets(neox.model)
    assert len(targets) == 8 and uncovered == []
    assert not any("embed" in t.name for t in targets)
    truth = opposition_loop(neox.model, neox.per_example_loss, neox.eval_batches(), targets, example=example)
    # tiny chunk budget: several position chunks, truncated sequences, several row chunks
    fast = opposition(neox.model, neox.per_example_loss, neox.eval_batches(), targets, example=example, chunk_mb=0.02)
    assert fast.n_examples == truth.n_examples == (6 if example == "sequence" else 6 * 8)
    assert fast.D == pytest.approx(truth.D, abs=1e-6)
    for name in truth.per_layer:
        assert fast.layer_D(name) == pytest.approx(truth.layer_D(name), abs=1e-6)
    assert fast.hist == truth.hist or sum(abs(a - b) for a, b in zip(fast.hist, truth.hist)) <= 2
    assert sum(fast.hist) == fast.n_coords


def test_per_position_algorithm_and_vmap_match_brute_force(neox):
    targets, _ = find_targets(neox.model)
    b = neox.eval_batches()[:1]
    tok = opposition_loop(neox.model, neox.per_example_loss, b, targets, example="token")
    assert opposition_per_position(neox.model, neox.per_example_loss, b, targets).D == pytest.approx(tok.D, abs=1e-6)
    seq = opposition_loop(neox.model, neox.per_example_loss, b, targets, example="sequence")
    assert opposition_vmap(neox.model, neox.per_example_loss, b, targets).D == pytest.approx(seq.D, abs=1e-6)


def test_token_slice_of_positions_matches_the_per_position_algorithm(neox):
    targets, _ = find_targets(neox.model)
    b = neox.eval_batches()[:1]
    zsl = opposition_per_position(neox.model, neox.per_example_loss, b, targets, positions=(3, 7))
    fast = opposition(neox.model, neox.per_example_loss, b, targets, example="token", positions=(3, 7), chunk_mb=0.02)
    assert fast.n_examples == zsl.n_examples == 3 * 4
    assert fast.D == pytest.approx(zsl.D, abs=1e-6)
    with pytest.raises(ValueError, match="outside"):
        opposition(neox.model, neox.per_example_loss, b, targets, example="token", positions=(3, 99))


@pytest.mark.parametrize("chunk_mb", [0.02, 64.0])
def test_token_groups_and_chunks_match_the_per_position_algorithm(neox, chunk_mb):
    """32 positions: 6 truncated forwards (groups of ceil(sqrt(32)) = 6 positions), each with
    several vmapped backward chunks (small budget) or one (large): all give ZSL's result."""
    targets, _ = find_targets(neox.model)
    b = random_token_batches(64, 1, 2, 33, seed=5)
    zsl = opposition_per_position(neox.model, neox.per_example_loss, b, targets)
    fast = opposition(neox.model, neox.per_example_loss, b, targets, example="token", chunk_mb=chunk_mb)
    assert fast.n_examples == zsl.n_examples == 64 and fast.notes == []
    for name in zsl.per_layer:
        assert fast.layer_D(name) == pytest.approx(zsl.layer_D(name), abs=1e-6)


def test_position_contributions_are_not_per_token_gradients(neox):
    """The rank-1 term a_s g_s^T is the per-token gradient only where the layer's output at s
    reaches no other position's loss (last block); attention makes earlier layers differ."""
    targets, _ = find_targets(neox.model)
    b = neox.eval_batches()[:1]
    pos = opposition(neox.model, neox.per_example_loss, b, targets, example="position")
    tok = opposition_loop(neox.model, neox.per_example_loss, b, targets, example="token")
    last = "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"
    assert pos.layer_D(last) == pytest.approx(tok.layer_D(last), abs=1e-6)
    first = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert abs(pos.layer_D(first) - tok.layer_D(first)) > 1e-3
    # and the |A|^T |G| matmul equals the explicit sum over positions of |a_s g_s^T|
    model = neox.model
    w = model.gpt_neox.layers[0].attention.query_key_value
    store = {}
    h = w.register_forward_hook(lambda m, i, o: store.update(a=i[0].detach(), z=o))
    loss = neox.per_example_loss(b[0]).sum()
    h.remove()
    (g,) = torch.autograd.grad(loss, [store["z"]])
    a, g = store["a"].reshape(-1, store["a"].shape[-1]), g.reshape(-1, g.shape[-1])
    S = sum(torch.outer(g[i], a[i]) for i in range(a.shape[0]))
    A = sum(torch.outer(g[i], a[i]).abs() for i in range(a.shape[0]))
    d = (1 - S.abs() / A).mean()
    assert pos.layer_D("gpt_neox.layers.0.attention.query_key_value.weight") == pytest.approx(float(d), abs=1e-6)


def test_opposite_gradients_cancel_exactly():
    """Two examples whose gradients are exact negatives: D_j = 1 everywhere; equal: D_j = 0."""
    lin = torch.nn.Linear(3, 2, bias=False).double()
    x = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]], dtype=torch.float64)  # input 2 is 0: A_j = 0

    def loss(batch, model):  # l_i = s_i * sum(W x_i): gradient s_i * 1 x_i^T
        return batch[1] * model(batch[0]).sum(-1)

    targets, _ = find_targets(lin, exclude=())
    cancel = opposition(lin, loss, [(x, torch.tensor([1.0, -1.0], dtype=torch.float64))], targets)
    agree = opposition(lin, loss, [(x, torch.tensor([1.0, 2.0], dtype=torch.float64))], targets)
    assert cancel.D == pytest.approx(1.0) and agree.D == pytest.approx(0.0)
    # the 2 coordinates no example moves are left out of the mean and the histogram
    assert cancel.n_zero == agree.n_zero == 2 and cancel.n_coords == 4
    assert cancel.hist[-1] == 4 and agree.hist[0] == 4 and sum(cancel.hist) == sum(agree.hist) == 4


class _TwiceMLP(torch.nn.Module):
    """A classifier that applies one Linear twice (weight sharing across calls)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(4, 6)
        self.shared = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(self.shared(torch.tanh(self.shared(h)))))


def test_classifier_with_a_shared_layer_matches_brute_force():
    model = _TwiceMLP().double()
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])

    def loss(batch, m):
        return torch.nn.functional.cross_entropy(m(batch[:, :4]), batch[:, 4].long(), reduction="none")

    batch = torch.cat([x, y[:, None].double()], 1)
    targets, _ = find_targets(model)
    truth = opposition_loop(model, loss, [batch], targets)
    for example in ("sequence", "token"):  # one loss per row: token falls back to sequence
        fast = opposition(model, loss, [batch], targets, example=example)
        assert fast.D == pytest.approx(truth.D, abs=1e-6)
        assert fast.layer_D("shared.weight") == pytest.approx(truth.layer_D("shared.weight"), abs=1e-6)


def test_gpt2_conv1d_layers_match_brute_force():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32)).double().eval()
    ck = CausalLMCheckpoint(_ref(), model, random_token_batches(50, 1, 2, 6))
    targets, _ = find_targets(model)
    assert {t.transposed for t in targets} == {True} and len(targets) == 4
    for example in ("sequence", "token"):
        truth = opposition_loop(model, ck.per_example_loss, ck.eval_batches(), targets, example=example)
        fast = opposition(model, ck.per_example_loss, ck.eval_batches(), targets, example=example, chunk_mb=0.01)
        assert fast.D == pytest.approx(truth.D, abs=1e-6)


# ---- loss-change interference, dt = 1 ----------------------------------------------------------


def _hand_sgd(w, splits, lr):
    x, y = (t.numpy() for t in splits["train"][0])
    grad = 2 * ((x @ w - y)[:, None] * x).mean(0)
    w1 = w - lr * grad
    out = {}
    for name, batches in [("val", splits["val"]), ("update", splits["train"])]:
        dl = np.concatenate([(xx.numpy() @ w1 - yy.numpy()) ** 2 - (xx.numpy() @ w - yy.numpy()) ** 2 for xx, yy in batches])
        out[name] = dl
    return out


def test_dt1_with_sgd_equals_a_hand_computed_update(tmp_path):
    w, splits = _regression_data()
    ck = LinearRegressionCheckpoint(_ref(lr=0.05), w, splits)
    w_before = ck.model.weight.detach().clone()
    ms = list(InterferenceMetric(grad=False).measure_checkpoint(CheckpointContext({}, tmp_path, 0, ck)))
    for task, dl in _hand_sgd(w, splits, 0.05).items():
        D = 1 - abs(dl.sum()) / np.abs(dl).sum()
        assert _by(ms, "D_dl_step", task).value == pytest.approx(D, rel=1e-9)
        assert _by(ms, "M_dl_step", task).value == pytest.approx(np.abs(dl).mean(), rel=1e-9)
        assert _by(ms, "dL_step", task).value == pytest.approx(abs(dl.mean()), rel=1e-9)
        assert _by(ms, "D_null_step", task).value == pytest.approx(1 - 1 / math.sqrt(dl.size))
        assert _by(ms, "D_dl_step", task).n == dl.size
    assert _by(ms, "D_dl_step", "val").extra["optimizer"] == "SGD"
    # the checkpoint's model is untouched: same weights, no gradients
    assert torch.equal(ck.model.weight, w_before) and ck.model.weight.grad is None


def test_dt1_restores_stored_optimizer_state(tmp_path):
    w, splits = _regression_data(seed=4)
    ck0 = LinearRegressionCheckpoint(_ref(), w, splits)
    # a real training history: two SGD+momentum steps leave a momentum buffer
    opt = torch.optim.SGD(ck0.model.parameters(), lr=0.03, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        ck0.per_example_loss(splits["val"][0]).mean().backward()
        opt.step()
    twin = copy.deepcopy(ck0.model)
    ck = LinearRegressionCheckpoint(_ref(lr=None), ck0.model.weight.detach().view(-1).numpy().copy(), splits,
                                    state={"optimizer": "torch.optim.SGD", "state_dict": copy.deepcopy(opt.state_dict())})
    stored = copy.deepcopy(ck.optimizer_state()["state_dict"]["state"])
    # truth: torch's own optimizer continuing on the twin
    opt2 = torch.optim.SGD(twin.parameters(), lr=0.03, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    x, y = splits["train"][0]
    before = {s: torch.cat([ck.per_example_loss(b) for b in splits[s]]).detach() for s in ("val",)}
    opt2.zero_grad()
    ((twin(x).squeeze(-1) - y) ** 2).mean().backward()
    opt2.step()
    after = torch.cat([ck.per_example_loss(b, twin) for b in splits["val"]]).detach()
    ms = list(InterferenceMetric(grad=False, loss_pair=False).measure_checkpoint(CheckpointContext({}, tmp_path, 0, ck)))
    d = _by(ms, "D_dl_step", "val")
    assert d.value == pytest.approx(interference_stats(after - before["val"]).D, rel=1e-9)
    assert d.extra["optimizer_source"] == "checkpoint" and d.extra["lr"] == pytest.approx(0.03)
    # the family's stored state is not modified by the step
    assert torch.equal(ck.optimizer_state()["state_dict"]["state"][0]["momentum_buffer"], stored[0]["momentum_buffer"])


def test_dt1_fresh_adamw_first_step_is_a_sign_step(tmp_path):
    """From zero state AdamW's first update is lr * g / (|g| + eps): ~lr * sign(g)."""
    w, splits = _regression_data(seed=5)
    ck = LinearRegressionCheckpoint(_ref(lr=0.01), w, splits)
    ms = list(InterferenceMetric(grad=False, optimizer="adamw").measure_checkpoint(CheckpointContext({}, tmp_path, 0, ck)))
    x, y = (t.numpy() for t in splits["train"][0])
    g = 2 * ((x @ w - y)[:, None] * x).mean(0)
    w1 = w - 0.01 * g / (np.abs(g) + 1e-8)
    dl = np.concatenate([(a.numpy() @ w1 - b.numpy()) ** 2 - (a.numpy() @ w - b.numpy()) ** 2 for a, b in splits["val"]])
    assert _by(ms, "D_dl_step", "val").value == pytest.approx(1 - abs(dl.sum()) / np.abs(dl).sum(), rel=1e-6)


def test_dt1_without_learning_rate_is_skipped_and_missing_train_split_falls_back(tmp_path):
    w, splits = _regression_data()
    ck = LinearRegressionCheckpoint(_ref(lr=None), w, splits)
    ms = list(InterferenceMetric(grad=False).measure_checkpoint(CheckpointContext({}, tmp_path, 0, ck)))
    d = _by(ms, "D_dl_step", "val")
    assert d.status == "skipped" and "learning rate" in d.message
    ck = LinearRegressionCheckpoint(_ref(lr=0.1), w, {"val": splits["val"]})
    ms = list(InterferenceMetric(grad=False).measure_checkpoint(CheckpointContext({}, tmp_path / "b", 0, ck)))
    d = _by(ms, "D_dl_step", "update")
    assert d.status == "ok" and "no split 'train'" in d.warning


def test_dt1_on_neox_leaves_the_model_untouched(neox, tmp_path):
    before = {n: p.detach().clone() for n, p in neox.model.named_parameters()}
    ms = list(InterferenceMetric(lr=1e-2, grad=False).measure_checkpoint(CheckpointContext({}, tmp_path, 0, neox)))
    d = _by(ms, "D_dl_step", "val")
    assert d.status == "ok" and 0.0 <= d.value <= 1.0 and d.n == 2 * 3 * 8
    assert _by(ms, "D_dl_step", "update").n == 4 * 8
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in neox.model.named_parameters())


# ---- dt = t: pair scope reads the previous checkpoint's artifact ---------------------------------


def test_pair_scope_reads_the_previous_checkpoint_losses(tmp_path):
    w, splits = _regression_data(seed=7)
    ck0 = LinearRegressionCheckpoint(_ref(step=10), w, splits)
    ck1 = LinearRegressionCheckpoint(_ref(step=20), w + 0.1, splits)
    metric = InterferenceMetric(grad=False, loss_step=False)
    none = list(metric.measure_pair(PairContext({}, tmp_path, 0, _ref(step=10), ck1)))
    assert _by(none, "D_dl_pair", "val").status == "skipped"
    assert list(metric.measure_checkpoint(CheckpointContext({}, tmp_path, 0, ck0))) == []  # only caches
    assert any(tmp_path.rglob("losses.safetensors"))
    ck0.close()
    ms = list(metric.measure_pair(PairContext({}, tmp_path, 0, _ref(step=10), ck1)))
    x = np.concatenate([a.numpy() for a, _ in splits["val"]])
    y = np.concatenate([b.numpy() for _, b in splits["val"]])
    dl = (x @ (w + 0.1) - y) ** 2 - (x @ w - y) ** 2
    assert _by(ms, "D_dl_pair", "val").value == pytest.approx(1 - abs(dl.sum()) / np.abs(dl).sum(), rel=1e-9)
    assert _by(ms, "dL_pair", "val").value == pytest.approx(abs(dl.mean()), rel=1e-9)
    assert _by(ms, "D_dl_pair", "val").extra["previous_step"] == 10


def test_checkpoint_scope_gradient_measures_on_neox(neox, tmp_path):
    ms = list(InterferenceMetric(loss_step=False, loss_pair=False, example="token").measure_checkpoint(
        CheckpointContext({}, tmp_path, 0, neox)))
    top = _by(ms, "D_grad_token", "val")
    targets, _ = find_targets(neox.model)
    truth = opposition_loop(neox.model, neox.per_example_loss, neox.eval_batches()[:1], targets, example="token")
    assert top.value == pytest.approx(truth.D, abs=1e-6) and top.n == 24
    assert len(top.extra["hist"]) == 100 and sum(top.extra["hist"]) == top.extra["n_coords"]
    assert _by(ms, "D_null_grad_token", "val").value == pytest.approx(1 - 1 / math.sqrt(24))
    assert len([m for m in ms if m.layer]) == 8


# ---- parameters and config ------------------------------------------------------------------


@pytest.mark.parametrize("kw, key", [({"example": "word"}, "example"), ({"optimizer": "lion"}, "optimizer"),
                                     ({"lr": 0}, "lr"), ({"bins": 0}, "bins"), ({"splits": []}, "splits")])
def test_bad_parameters_name_the_key(kw, key):
    with pytest.raises(ParameterError) as err:
        InterferenceMetric(**kw)
    assert err.value.key == key


def test_config_file_instantiates_the_metric():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "metric" / "interference.yaml")
    node = OmegaConf.to_container(cfg["interference"])
    assert node.pop("_target_") == "harness_plugins.metrics.interference.InterferenceMetric"
    m = InterferenceMetric(**node)
    assert m.name == "interference" and m.example in ("sequence", "token", "position")


@pytest.mark.slow
def test_end_to_end_on_the_toy_family(tmp_path):
    """`python -m harness model=toy_softmax metric=interference`: every record ok, pair scope present."""
    import subprocess
    import sys

    import pandas as pd

    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "harness", "model=toy_softmax", "metric=interference", "model.steps=50",
                    "model.n_checkpoints=3", "model.temperature=0.01", "model.batch_size=128", f"hydra.run.dir={out}"],
                   check=True, capture_output=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    rec = pd.read_parquet(out / "records.parquet")
    rec = rec[rec.metric == "interference"]
    assert (rec.status == "ok").all(), rec[rec.status != "ok"][["measure", "message"]]
    assert {"checkpoint", "pair"} <= set(rec.scope)
    assert rec[rec.measure == "D_dl_pair"].value.between(0, 1).all()
