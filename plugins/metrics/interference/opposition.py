"""Per-coordinate gradient opposition D_j = 1 - |sum_i g_ij| / sum_i |g_ij| over per-example
gradients g_i, accumulated in fp32 (S_j = sum_i g_ij, A_j = sum_i |g_ij|) chunk by chunk, so
the per-example gradients of a whole batch are never held at once.

The per-example gradients come from the core's public `harness.per_example` (per sequence or
per token, streamed in chunks; only ``nn.Linear``/``Conv1D`` weight matrices). What "example"
means (parameter ``example``):

``sequence``  the summed loss of one row of the batch (one backward per batch).
``token``     one per-token loss (the paper's definition; K positions per vmapped backward).
``position``  the rank-1 contribution a_s g_s^T of each position to the batch gradient.
              Cheap (``|A|^T |G|`` is one matmul, since |a g^T| = |a| |g|^T elementwise)
              but NOT the per-token gradient except for layers whose output at s reaches
              only the loss at s (e.g. the last block's MLP). Offered because it is cheap;
              label it as such.

The independent references (one forward+backward per example, ``torch.func.vmap``, ZSL's
one-backward-per-position algorithm) live in the tests (``tests/opposition_oracles.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.per_example import (
    LayerCapture,
    PerExampleGradients,
    Target,
    grad_model,
    layer_rows,
    outer,
)
from harness.per_example import find_targets as _find_targets

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EXCLUDE",
    "EXAMPLES",
    "OppositionAccumulator",
    "OppositionResult",
    "Target",
    "find_targets",
    "opposition",
]

LossFn = Callable[[Any, torch.nn.Module], torch.Tensor]
EXAMPLES = ("sequence", "token", "position")
#: embeddings and unembeddings (GPT-NeoX embed_in/embed_out, GPT-2 wte/wpe/lm_head, OLMo ff_out,
#: Pico embedding_proj/de_embedding_proj) are excluded, as in ZSL's D(grad l)
DEFAULT_EXCLUDE = ("*embed*", "*wte*", "*wpe*", "*lm_head*", "*ff_out*")


def find_targets(
    model: torch.nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> tuple[list[Target], list[str]]:
    """`harness.per_example.find_targets` with the paper's exclusions (embeddings) by default."""
    return _find_targets(model, include, exclude)


# ---- accumulation -----------------------------------------------------------------------


@dataclass
class OppositionResult:
    """Mean D_j (unweighted over coordinates with A_j > 0) overall and per matrix, and the
    histogram of D_j on [0, 1]."""

    D: float
    n_examples: int
    n_coords: int
    n_zero: int  # coordinates with A_j == 0 (no example moves them): left out of the mean
    hist: list[int]
    per_layer: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # name -> (D, n, n_zero)
    example: str = "sequence"
    notes: list[str] = field(default_factory=list)

    def layer_D(self, name: str) -> float:
        return self.per_layer[name][0]


class OppositionAccumulator:
    """Running fp32 sums S_j = sum_i g_ij and A_j = sum_i |g_ij| per weight matrix.

    Also owns a reusable fp32 workspace for per-example gradients and a row of ones, so the
    hot loop allocates (and page-faults, and zero-fills) nothing per chunk.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], device: torch.device | str = "cpu"):
        self.S = {n: torch.zeros(s, dtype=torch.float32, device=device) for n, s in shapes.items()}
        self.A = {n: torch.zeros(s, dtype=torch.float32, device=device) for n, s in shapes.items()}
        self.n_examples = 0
        self.device = torch.device(device)
        self._work = torch.empty(0, dtype=torch.float32, device=device)
        self._ones = torch.empty(1, 0, dtype=torch.float32, device=device)

    def workspace(self, numel: int) -> torch.Tensor:
        """A flat fp32 buffer of ``numel`` elements, reused between calls (contents undefined)."""
        if self._work.numel() < numel:
            self._work = torch.empty(numel, dtype=torch.float32, device=self.device)
        return self._work[:numel]

    def _ones_row(self, n: int) -> torch.Tensor:
        if self._ones.shape[1] < n:
            self._ones = torch.ones(1, n, dtype=torch.float32, device=self.device)
        return self._ones[:, :n]

    def add_examples(self, name: str, grads: torch.Tensor) -> None:
        """Add per-example gradients ``grads`` (E, *shape) of matrix ``name`` (left unchanged)."""
        flat = grads.reshape(-1, self.S[name].numel())
        if flat.dtype != torch.float32:
            self.add_examples_(name, flat.float())  # a fresh copy: ours to overwrite
            return
        ones = self._ones_row(flat.shape[0])
        self.S[name].view(1, -1).addmm_(ones, flat)
        self.A[name].view(1, -1).addmm_(ones, torch.abs(flat, out=self.workspace(flat.numel()).view(flat.shape)))

    def add_examples_(self, name: str, flat: torch.Tensor) -> None:
        """Like `add_examples` for a contiguous fp32 (E, numel) ``flat`` that may be
        overwritten (it is, with |flat|): one GEMV into S, an in-place abs, one GEMV into A."""
        ones = self._ones_row(flat.shape[0])
        # on CPU ``ones @ flat`` (a GEMV) is much faster than ``flat.sum(0)`` (a strided
        # reduction) and, with addmm_, adds into the accumulator without a temporary
        self.S[name].view(1, -1).addmm_(ones, flat)
        self.A[name].view(1, -1).addmm_(ones, flat.abs_())

    def add_sums(self, name: str, s: torch.Tensor, a: torch.Tensor) -> None:
        self.S[name] += s.float()
        self.A[name] += a.float()

    def result(self, bins: int = 100, example: str = "sequence") -> OppositionResult:
        hist = torch.zeros(bins, dtype=torch.float64)
        total, n_all, zero_all, per_layer = 0.0, 0, 0, {}
        for name in self.S:
            a, s = self.A[name], self.S[name]
            nz = a > 0
            # no boolean indexing (a nonzero + gather per matrix): coordinates with A_j = 0
            # get D_j = 0 here and are taken back out of the sum and of histogram bin 0
            d = torch.where(nz, 1.0 - s.abs() / a.clamp_min(torch.finfo(a.dtype).tiny), 0.0).clamp_(0.0, 1.0)
            n = int(nz.sum())
            zero = d.numel() - n
            d_sum = float(d.sum(dtype=torch.float64))
            per_layer[name] = (d_sum / n if n else math.nan, n, zero)
            total += d_sum
            n_all += n
            zero_all += zero
            h = torch.histc(d, bins=bins, min=0.0, max=1.0).double().cpu()
            h[0] -= zero
            hist += h
        return OppositionResult(
            D=total / n_all if n_all else math.nan,
            n_examples=self.n_examples,
            n_coords=n_all,
            n_zero=zero_all,
            hist=[int(x) for x in hist.tolist()],
            per_layer=per_layer,
            example=example,
        )


# ---- the fast method --------------------------------------------------------------------


def opposition(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    targets: Sequence[Target],
    *,
    example: str = "sequence",
    chunk_mb: float = 256.0,
    bins: int = 100,
    positions: tuple[int, int] | None = None,
) -> OppositionResult:
    """Gradient opposition over every example of ``batches`` (see module docstring).

    ``positions`` (token only): restrict the examples to loss positions [p0, p1) of every row,
    e.g. to bound the cost of long sequences or to time a slice of them.
    """
    if example not in EXAMPLES:
        raise ValueError(f"example must be one of {EXAMPLES}, got {example!r}")
    if not targets:
        raise ValueError("no weight matrices selected")
    acc = OppositionAccumulator({t.name: t.shape for t in targets}, device=targets[0].module.weight.device)
    notes: list[str] = []
    if example == "position":
        fmodel = grad_model(model)
        with torch.enable_grad():
            for batch in batches:
                _position_batch(fmodel, loss_fn, batch, targets, acc)
    else:
        grads = PerExampleGradients(model, loss_fn, batches, targets, example=example, chunk_mb=chunk_mb,
                                    positions=positions)
        for chunk in grads:  # each chunk is ours to overwrite until the next: add_examples_ does
            acc.add_examples_(chunk.name, chunk.grads.view(chunk.grads.shape[0], -1))
        acc.n_examples += grads.n_examples
        notes += grads.notes
    res = acc.result(bins, example)
    res.notes = sorted(set(notes))
    return res


def _position_batch(fmodel: Any, loss_fn: LossFn, batch: Any, targets: Sequence[Target],
                    acc: OppositionAccumulator) -> None:
    """Rank-1 terms of each position: S += A^T G and A += |A|^T |G| (one matmul each)."""
    with LayerCapture(targets) as cap:
        loss = loss_fn(batch, fmodel).float()
    n_rows = loss.shape[0]
    outs = cap.flat_outputs()
    grads = iter(torch.autograd.grad(loss.sum(), outs, allow_unused=True))
    # N counts loss values (for LMs the layers also see the last input token, whose output gets
    # no gradient: it adds nothing to S or A)
    acc.n_examples += loss.numel()
    for t in targets:
        ins = cap.inputs.pop(t.name)
        gs = [next(grads) for _ in ins]
        for a, g in zip(ins, gs):
            if g is None:
                continue
            a, g = layer_rows(a, n_rows), layer_rows(g, n_rows)
            a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
            acc.add_sums(t.name, outer(a2, g2, t.transposed), outer(a2.abs(), g2.abs(), t.transposed))
    cap.clear()
