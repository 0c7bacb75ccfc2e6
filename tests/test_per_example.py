"""The public per-example gradient API against brute force (one backward per example)."""

from __future__ import annotations

import pytest
import torch

from harness.api import CheckpointRef
from harness.lm import CausalLMCheckpoint, random_token_batches, tiny_gpt_neox
from harness.per_example import FunctionalModel, PerExampleGradients, find_targets


@pytest.fixture(scope="module")
def neox():
    model = tiny_gpt_neox(vocab_size=48, hidden=16, layers=2, heads=2)
    return CausalLMCheckpoint(CheckpointRef("t", "t/run", "16", 0), model,
                              batches=random_token_batches(48, 2, 3, seq_len=7, seed=1))


def _brute(ckpt, batches, targets, example):
    """One forward+backward per example, gradients w.r.t. the weights themselves."""
    params = {n: p.detach().requires_grad_(True) for n, p in ckpt.model.named_parameters()}
    fmodel = FunctionalModel(ckpt.model, params)
    out = {t.name: [] for t in targets}
    for batch in batches:
        for r in range(batch.shape[0]):
            loss = ckpt.per_example_loss(batch[r : r + 1], fmodel).float().reshape(-1)
            units = [loss.sum()] if example == "sequence" else list(loss)
            for j, u in enumerate(units):
                gs = torch.autograd.grad(u, [params[t.name] for t in targets], retain_graph=True)
                for t, g in zip(targets, gs):
                    out[t.name].append((id(batch), r, j, g))
    return out


@pytest.mark.parametrize("example", ["sequence", "token"])
def test_streamed_per_example_gradients_equal_brute_force(neox, example):
    targets, _ = find_targets(neox.model, exclude=["*embed*"])
    batches = neox.eval_batches()
    # a tiny chunk budget forces many chunks per layer (streaming), the result must not care
    grads = PerExampleGradients(neox.model, neox.per_example_loss, batches, targets, example=example, chunk_mb=0.001)
    got = {t.name: {} for t in targets}
    n_chunks = 0
    for chunk in grads:
        n_chunks += 1
        g = chunk.grads.clone()  # the buffer is reused by the next chunk
        if example == "sequence":
            for k, r in enumerate(range(*chunk.rows)):
                got[chunk.name][(chunk.batch, r, 0)] = g[k]
        else:
            rows = batches[chunk.batch].shape[0]
            t0, t1 = chunk.positions
            for k in range(g.shape[0]):
                t, r = t0 + k // rows, k % rows
                got[chunk.name][(chunk.batch, r, t)] = g[k]
    truth = _brute(neox, batches, targets, example)
    ids = {id(b): i for i, b in enumerate(batches)}
    per_row = 1 if example == "sequence" else batches[0].shape[1] - 1
    assert grads.n_examples == sum(b.shape[0] for b in batches) * per_row
    assert n_chunks > 2 * len(targets)
    for name, items in truth.items():
        assert len(got[name]) == len(items)
        for bid, r, j, g in items:
            assert torch.allclose(got[name][(ids[bid], r, j)], g.float(), atol=1e-6, rtol=1e-4), (name, r, j)


def test_bad_arguments_are_refused(neox):
    targets, _ = find_targets(neox.model)
    with pytest.raises(ValueError, match="example must be one of"):
        PerExampleGradients(neox.model, neox.per_example_loss, [], targets, example="word")
    with pytest.raises(ValueError, match="no weight matrices"):
        PerExampleGradients(neox.model, neox.per_example_loss, [], [])
