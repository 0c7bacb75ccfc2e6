"""The toy softmax family: batched training equals per-config training; gradients are exact."""

from __future__ import annotations

import math

import pytest
import torch

from harness.api import FieldUnavailable, ParameterError
from harness_plugins.models.toy_softmax import ToySoftmaxFamily
from harness_plugins.models.toy_softmax.train import (
    ToyConfig,
    checkpoint_steps,
    kl_and_grad,
    rms_normalise,
    teacher_weights,
    train,
)


def test_closed_form_gradient_matches_autograd():
    torch.manual_seed(0)
    x = rms_normalise(torch.randn(2, 64, 8, dtype=torch.float64))
    w_t = torch.randn(2, 10, 8, dtype=torch.float64)
    w_s = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    temps = torch.tensor([0.5, 0.05], dtype=torch.float64)
    loss, grad = kl_and_grad(x, w_s.detach(), w_t, temps)
    # independent: torch's own KL divergence, differentiated by autograd
    ref = torch.stack([
        torch.nn.functional.kl_div(torch.log_softmax(x[k] @ w_s[k].T, -1), torch.log_softmax(x[k] @ w_t[k].T / temps[k], -1),
                                   log_target=True, reduction="batchmean")
        for k in range(2)
    ])
    (g_ref,) = torch.autograd.grad(ref.sum(), w_s)
    assert torch.allclose(loss, ref.detach(), atol=1e-12)
    assert torch.allclose(grad, g_ref, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_equals_one_at_a_time(optimizer):
    configs = [ToyConfig(1e-2, 1.0 if optimizer == "sgd" else 1e-2, 0), ToyConfig(1e-1, 3.0 if optimizer == "sgd" else 3e-2, 1),
               ToyConfig(1e-3, 2.0 if optimizer == "sgd" else 2e-2, 0)]
    kw = dict(d=8, vocab=16, steps=25, batch_size=32, optimizer=optimizer, ckpt_steps=[0, 5, 25])
    batched = train(configs, **kw)
    for k, cfg in enumerate(configs):
        alone = train([cfg], **kw)
        assert torch.allclose(batched.student[k], alone.student[0], atol=1e-5, rtol=1e-4)
        assert torch.allclose(batched.train_loss[k], alone.train_loss[0], atol=1e-5, rtol=1e-4)


def test_adam_matches_torch_optim():
    """The hand-written batched Adam equals torch.optim.Adam on the same gradients."""
    cfg = ToyConfig(1e-2, 1e-2, 3)
    kw = dict(d=8, vocab=16, steps=20, batch_size=32, ckpt_steps=[20])
    ours = train([cfg], optimizer="adam", **kw)
    w_t = teacher_weights(8, 16, 3)
    w = torch.zeros(16, 8, requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        x = rms_normalise(torch.randn(32, 8, generator=gen))
        loss = torch.nn.functional.kl_div(torch.log_softmax(x @ w.T, -1), torch.log_softmax(x @ w_t.T / 1e-2, -1),
                                          log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(ours.student[0, -1], w.detach(), atol=1e-5)


def test_family_checkpoints_fields_and_history(tmp_path):
    fam = ToySoftmaxFamily(d=8, vocab=16, temperature=[1e-2, 1e-1], lr=1.0, batch_size=32, steps=30,
                           n_checkpoints=5, eval_batches=2, workdir=str(tmp_path))
    refs = list(fam.checkpoints())
    assert {r.model_id for r in refs} == {"toy_softmax/T=0.01,lr=1,seed=0", "toy_softmax/T=0.1,lr=1,seed=0"}
    steps = sorted({r.step for r in refs})
    assert steps == checkpoint_steps(30, 5) and steps[0] == 0 and steps[-1] == 30
    first, last = [r for r in refs if "T=0.01" in r.model_id][::len(steps) - 1][:2]
    c0, c1 = fam.load(first), fam.load(last)
    assert torch.count_nonzero(c0.model.weight) == 0  # zero init
    # the KL loss is non-negative and drops with training
    l0 = c0.per_example_loss(c0.eval_batches()[0])
    l1 = c1.per_example_loss(c1.eval_batches()[0])
    assert (l0 >= -1e-6).all() and l1.mean() < l0.mean()
    # delta field = difference of the two students' weights; the first checkpoint offers none
    assert "delta" not in c1.field_kinds()
    with pytest.raises(FieldUnavailable, match="first selected checkpoint of its run: no delta"):
        c1.field("delta")
    c1.previous = first
    assert "delta" in c1.field_kinds()
    (_, delta), = list(c1.field("delta"))
    assert torch.allclose(delta, c1.model.weight - c0.model.weight)
    (_, grad), = list(c1.field("gradient"))
    assert grad.shape == c1.model.weight.shape and grad.abs().sum() > 0
    hist = fam.history(first.model_id)
    assert len(hist) == 30 and (hist["tau"].diff().dropna() > 0).all()
    # a second family with the same settings reuses the cached training
    again = ToySoftmaxFamily(d=8, vocab=16, temperature=[1e-2, 1e-1], lr=1.0, batch_size=32, steps=30,
                             n_checkpoints=5, eval_batches=2, workdir=str(tmp_path))
    again.prepare()
    assert torch.equal(again.result.student, fam.result.student)


@pytest.mark.parametrize("kw,key", [({"temperature": 0}, "temperature"), ({"optimizer": "lbfgs"}, "optimizer"),
                                    ({"steps": 0}, "steps"), ({"lr": [1.0, -2.0]}, "lr")])
def test_bad_parameters_name_key(kw, key):
    with pytest.raises(ParameterError) as exc:
        ToySoftmaxFamily(**kw)
    assert exc.value.key == key and exc.value.allowed


def test_clamped_exp_leaves_softmax_and_lse_unchanged_on_peaked_logits():
    """The trainer clamps shifted logits at `exp_floor` (exp's slow path is underflow); against
    torch's own softmax/logsumexp on teacher-like peaked logits, only sub-``tiny`` entries move."""
    from harness_plugins.models.toy_softmax.train import _softmax_and_lse, exp_floor

    torch.manual_seed(0)
    z = torch.randn(4, 64, 128) * 1e3  # temperature 1e-3 logits: most of exp(z - max) underflows
    p, lse = _softmax_and_lse(z)
    ref_p, ref_lse = torch.softmax(z, -1), torch.logsumexp(z, -1)
    tiny = torch.finfo(torch.float32).tiny
    assert float((ref_p < tiny).float().mean()) > 0.5  # the case the clamp is for
    assert torch.allclose(lse, ref_lse, rtol=1e-6, atol=0)
    big = ref_p >= 1e-30  # well above the clamp (exp(exp_floor) = 1.9e-38)
    assert float((p[~big] - ref_p[~big]).abs().max()) <= 2 * math.exp(exp_floor(torch.float32))
    assert torch.allclose(p[big], ref_p[big], rtol=1e-5, atol=0)


def test_per_example_loss_is_torch_kl_on_cached_and_fresh_batches(tmp_path):
    """The teacher's side is cached per run for the validation batches (computed once for every
    checkpoint); the loss must equal torch's KL divergence on those and on uncached batches."""
    fam = ToySoftmaxFamily(d=8, vocab=16, temperature=[1e-3, 1e-1], lr=1.0, batch_size=32, steps=20,
                           n_checkpoints=4, eval_batches=2, workdir=str(tmp_path))
    refs = [r for r in fam.checkpoints() if r.step > 0]
    for ref in (refs[0], refs[-1]):  # two runs, two temperatures: the cache is per run
        ck = fam.load(ref)
        for batch in [*ck.eval_batches("val"), *ck.eval_batches("train")]:
            want = torch.nn.functional.kl_div(torch.log_softmax(ck.logits(batch), -1),
                                              torch.log_softmax(ck.teacher_logits(batch), -1), log_target=True,
                                              reduction="none").sum(-1)
            assert torch.allclose(ck.per_example_loss(batch), want, atol=1e-5)
    assert len(fam._teacher) == 2  # one entry per run, reused by its checkpoints
