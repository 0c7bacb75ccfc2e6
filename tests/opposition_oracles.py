"""Independent references for per-example gradient opposition (tests and bench only).

Moved out of the product: the `interference` metric uses `harness.per_example`; these brute
force paths (one forward+backward per example, ``torch.func.vmap``, ZSL's one backward per
position) are the truths it is checked against in tests/test_interference.py and timed
against in bench/bench_interference.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.per_example import FunctionalModel, LayerCapture, Target, grad_model, layer_rows, outer
from harness_plugins.metrics.interference.opposition import OppositionAccumulator, OppositionResult

LossFn = Callable[[Any, torch.nn.Module], torch.Tensor]

def opposition_per_position(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    targets: Sequence[Target],
    *,
    bins: int = 100,
    positions: tuple[int, int] | None = None,
) -> OppositionResult:
    """Per-token opposition by ZSL's algorithm: one forward, then for each position t one
    backward of sum_b l[b, t] (retain_graph) and per-row outer products over all positions."""
    fmodel = grad_model(model)
    acc = OppositionAccumulator({t.name: t.shape for t in targets}, device=targets[0].module.weight.device)
    with torch.enable_grad():
        for batch in batches:
            with LayerCapture(targets) as cap:
                loss = loss_fn(batch, fmodel).float()
            n_rows = loss.shape[0]
            loss = loss.reshape(n_rows, -1)
            p0, p1 = positions if positions is not None else (0, loss.shape[1])
            acc.n_examples += n_rows * (p1 - p0)
            outs = cap.flat_outputs()
            ins = [layer_rows(a, n_rows) for t in targets for a in cap.inputs[t.name]]
            for pos in range(p0, p1):
                gz = torch.autograd.grad(loss[:, pos].sum(), outs, retain_graph=True)
                i = 0
                for t in targets:
                    total = None
                    for _ in cap.inputs[t.name]:
                        g = outer(ins[i], layer_rows(gz[i], n_rows), t.transposed)
                        total = g if total is None else total + g
                        i += 1
                    acc.add_examples(t.name, total)
            cap.clear()
    return acc.result(bins, "token")


def opposition_loop(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches: Sequence[torch.Tensor],
    targets: Sequence[Target],
    *,
    example: str = "sequence",
    bins: int = 100,
) -> OppositionResult:
    """Brute force: a separate forward+backward per row (``sequence``), or per token loss
    (``token``: one forward per row, one backward per position), taking gradients w.r.t. the
    weight parameters themselves. Slow; the truth the fast paths are checked against."""
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    fmodel = FunctionalModel(model, params)
    weights = [params[t.name] for t in targets]
    acc = OppositionAccumulator({t.name: t.shape for t in targets}, device=targets[0].module.weight.device)
    with torch.enable_grad():
        for batch in batches:
            for r in range(batch.shape[0]):
                loss = loss_fn(batch[r : r + 1], fmodel).float().reshape(-1)
                units = [loss.sum()] if example == "sequence" else list(loss)
                for j, u in enumerate(units):
                    gs = torch.autograd.grad(u, weights, retain_graph=j < len(units) - 1, allow_unused=True)
                    for t, g in zip(targets, gs):
                        if g is not None:  # None: this example does not reach the matrix (adds 0)
                            acc.add_examples(t.name, g.unsqueeze(0))
                    acc.n_examples += 1
    return acc.result(bins, example)


def opposition_vmap(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches: Sequence[torch.Tensor],
    targets: Sequence[Target],
    *,
    chunk_size: int | None = None,
    bins: int = 100,
) -> OppositionResult:
    """Per-sequence opposition with ``torch.func.vmap(grad(...))`` (the spike's recipe)."""
    from torch.func import grad, vmap

    base = {n: p.detach() for n, p in model.named_parameters()}
    names = [t.name for t in targets]

    def row_loss(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return loss_fn(x.unsqueeze(0), FunctionalModel(model, {**base, **w})).float().sum()

    acc = OppositionAccumulator({t.name: t.shape for t in targets}, device=targets[0].module.weight.device)
    w0 = {n: base[n] for n in names}
    for batch in batches:
        g = vmap(grad(row_loss), in_dims=(None, 0), chunk_size=chunk_size)(w0, batch)
        for n in names:
            acc.add_examples(n, g[n])
        acc.n_examples += batch.shape[0]
    return acc.result(bins, "sequence")
