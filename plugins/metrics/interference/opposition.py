"""Per-coordinate gradient opposition D_j = 1 - |sum_i g_ij| / sum_i |g_ij| over per-example
gradients g_i, accumulated in fp32 (S_j = sum_i g_ij, A_j = sum_i |g_ij|) chunk by chunk, so
the per-example gradients of a whole batch are never held at once.

Only weight matrices of ``nn.Linear`` (and transformers' ``Conv1D``) are covered: for those
the gradient of any loss is a sum over the positions s that use the layer of the outer product
of the layer's output gradient and its input, ``dW = sum_s g_s a_s^T``. Forward hooks capture
the inputs a, ONE batched backward (``torch.autograd.grad`` w.r.t. the layer outputs only,
so the weight gradients of the ordinary backward are never formed) gives the output
gradients g, and a batched matmul per layer gives every example's gradient. What
"example" means (parameter ``example``):

``sequence``  the summed loss of one row of the batch. Rows do not interact (eval mode), so
              the output gradients of the summed batch loss restricted to row b ARE the
              gradients of row b's loss: one backward, then ``G_b^T A_b`` per row.
``token``     one per-token loss (the paper's definition). Attention mixes positions, so the
              gradient of the loss at position t is NOT the rank-1 term at position t; it
              needs the output gradients of that one loss at every position s <= t, i.e. one
              backward per position (the ZSL algorithm, `opposition_per_position`). We batch
              K positions into one vmapped backward (``is_grads_batched``) and, for causal
              token batches, run each chunk on the sequence truncated after its last
              position, which halves the work on average (`opposition`).
``position``  the rank-1 contribution a_s g_s^T of each position to the batch gradient.
              Cheap (``|A|^T |G|`` is one matmul, since |a g^T| = |a| |g|^T elementwise)
              but NOT the per-token gradient except for layers whose output at s reaches
              only the loss at s (e.g. the last block's MLP). Offered because it is cheap;
              label it as such.

`opposition_loop` (one forward+backward per example) and `opposition_vmap` (torch.func) are
the independent references the tests and ``bench/bench_interference.py`` compare against.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .loss_change import FunctionalModel

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EXCLUDE",
    "EXAMPLES",
    "OppositionAccumulator",
    "OppositionResult",
    "Target",
    "find_targets",
    "opposition",
    "opposition_loop",
    "opposition_per_position",
    "opposition_vmap",
]

LossFn = Callable[[Any, torch.nn.Module], torch.Tensor]
EXAMPLES = ("sequence", "token", "position")
#: embeddings and unembeddings (GPT-NeoX embed_in/embed_out, GPT-2 wte/wpe/lm_head, OLMo ff_out,
#: Pico embedding_proj/de_embedding_proj) are excluded, as in ZSL's D(grad l)
DEFAULT_EXCLUDE = ("*embed*", "*wte*", "*wpe*", "*lm_head*", "*ff_out*")
_MB = 1 << 20
#: cap on the per-example gradient chunk of the sequence path (MiB), so that the workspace stays in
#: L3 between the bmm and the two GEMVs (measured 1.21x -> 1.13x on the 25M bench config)
_CACHE_MB = 8.0


# ---- targets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One weight matrix: its parameter name, its module, and whether it is stored (in, out)."""

    name: str
    module: torch.nn.Module
    transposed: bool  # transformers Conv1D: y = x @ W + b with W (in, out)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.module.weight.shape)  # type: ignore[return-value]


def _is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def find_targets(
    model: torch.nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> tuple[list[Target], list[str]]:
    """Weight matrices of Linear/Conv1D modules whose parameter name matches ``include`` and
    not ``exclude`` (glob patterns); also the names of other matching 2-D parameters, which
    this method cannot cover (reported, not silently dropped)."""

    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(
            fnmatch.fnmatchcase(name, p) for p in exclude
        )

    targets, covered = [], set()
    for mod_name, mod in model.named_modules():
        name = f"{mod_name}.weight" if mod_name else "weight"
        if isinstance(mod, torch.nn.Linear) or _is_conv1d(mod):
            covered.add(id(mod.weight))
            if wanted(name) and mod.weight.dim() == 2:
                targets.append(Target(name, mod, transposed=not isinstance(mod, torch.nn.Linear)))
    seen = {id(t.module.weight) for t in targets}
    uncovered = [n for n, p in model.named_parameters() if p.dim() == 2 and wanted(n) and id(p) not in covered]
    # a weight shared by two modules would be counted twice
    if len(seen) != len(targets):
        raise ValueError("a weight matrix is shared by several Linear modules; not supported")
    return targets, uncovered


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


# ---- capture ----------------------------------------------------------------------------


class _Capture:
    """Forward hooks storing each target's input (detached) and output (in the graph).

    A module called several times per forward keeps one entry per call.
    """

    def __init__(self, targets: Sequence[Target]):
        self.targets = list(targets)
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> _Capture:
        for t in self.targets:
            self._handles.append(t.module.register_forward_hook(self._hook(t.name)))
        return self

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inp: tuple[Any, ...], out: torch.Tensor) -> None:
            self.inputs.setdefault(name, []).append(inp[0].detach())
            self.outputs.setdefault(name, []).append(out)

        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def flat_outputs(self) -> list[torch.Tensor]:
        missing = [t.name for t in self.targets if t.name not in self.outputs]
        if missing:
            raise RuntimeError(f"target modules not called by the forward pass: {missing[:5]}")
        return [o for t in self.targets for o in self.outputs[t.name]]

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()


def _grad_params(model: torch.nn.Module) -> FunctionalModel:
    """The model run on detached leaf copies (shared storage, no copy) that require grad, so a
    graph exists even for frozen checkpoints and the checkpoint's ``.grad`` stay untouched."""
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    return FunctionalModel(model, params)


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, *, d) -> (B, P, d) float32: the positions of each example that used the layer."""
    if x.shape[0] != batch:
        if x.dim() >= 2 and x.shape[0] % batch == 0:
            # batch-first flattening (B*S, d) by the model
            return x.reshape(batch, -1, x.shape[-1]).float()
        raise RuntimeError(f"layer input has leading dim {x.shape[0]}, not the batch size {batch}")
    return x.reshape(batch, -1, x.shape[-1]).float()


def _per_example(a: torch.Tensor, g: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Per-example weight gradients (..., out, in) [or (..., in, out)] from a (..., P, in) and
    g (..., P, out): one batched matmul."""
    return a.transpose(-1, -2) @ g if transposed else g.transpose(-1, -2) @ a


def _chunk_rows(per_row_bytes: int, budget_mb: float) -> int:
    return max(1, int(budget_mb * _MB // max(per_row_bytes, 1)))


def _accumulate_rows(acc: OppositionAccumulator, t: Target, a: torch.Tensor, g: torch.Tensor, budget_mb: float) -> None:
    """a (R, P, in), g (R, P, out) -> add the R per-row gradients, a few rows at a time.

    Each chunk's per-row gradients are written by ``bmm(out=)`` into the accumulator's
    reusable workspace, which holds at most ``_CACHE_MB`` (so it stays in cache between the
    matmul and the two reductions) and at most ``budget_mb``."""
    numel = t.module.weight.numel()
    shape = t.shape
    R = a.shape[0]
    step = min(R, _chunk_rows(4 * numel, min(budget_mb, _CACHE_MB)))
    work = acc.workspace(step * numel)
    lhs, rhs = (a.transpose(-1, -2), g) if t.transposed else (g.transpose(-1, -2), a)
    for r0 in range(0, R, step):
        r = min(step, R - r0)
        out = work[: r * numel].view(r, *shape)
        torch.bmm(lhs[r0 : r0 + r], rhs[r0 : r0 + r], out=out)
        acc.add_examples_(t.name, out.view(r, numel))


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
    fmodel = _grad_params(model)
    acc = OppositionAccumulator({t.name: t.shape for t in targets}, device=targets[0].module.weight.device)
    notes: list[str] = []
    with torch.enable_grad():
        for batch in batches:
            if example == "token":
                _token_batch(fmodel, loss_fn, batch, targets, acc, chunk_mb, notes, positions)
            else:
                _sequence_or_position_batch(fmodel, loss_fn, batch, targets, acc, example, chunk_mb)
    res = acc.result(bins, example)
    res.notes = sorted(set(notes))
    return res


def _sequence_or_position_batch(fmodel, loss_fn, batch, targets, acc, example, chunk_mb) -> None:
    with _Capture(targets) as cap:
        loss = loss_fn(batch, fmodel).float()
    n_rows = loss.shape[0]
    outs = cap.flat_outputs()
    grads = iter(torch.autograd.grad(loss.sum(), outs, allow_unused=True))
    # position: N counts loss values (for LMs the layers also see the last input token, whose
    # output gets no gradient: it adds nothing to S or A)
    acc.n_examples += loss.numel() if example == "position" else n_rows
    for t in targets:
        ins = cap.inputs.pop(t.name)
        gs = [next(grads) for _ in ins]
        for a, g in zip(ins, gs):
            if g is None:
                continue
            a, g = _rows(a, n_rows), _rows(g, n_rows)
            if example == "sequence":
                if len(ins) == 1:
                    _accumulate_rows(acc, t, a, g, chunk_mb)
                continue
            # position: rank-1 terms; sum_s |a_s g_s^T| = |A|^T |G| (one matmul each)
            a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
            acc.add_sums(t.name, _per_example(a2, g2, t.transposed), _per_example(a2.abs(), g2.abs(), t.transposed))
        if example == "sequence" and len(ins) > 1:
            # several calls: a row's gradient is the sum over calls (sum before abs)
            rows = [(_rows(a, n_rows), _rows(g, n_rows)) for a, g in zip(ins, gs) if g is not None]
            a = torch.cat([r[0] for r in rows], 1)
            g = torch.cat([r[1] for r in rows], 1)
            _accumulate_rows(acc, t, a, g, chunk_mb)
    cap.clear()


def _is_causal_token_batch(batch: Any) -> bool:
    return isinstance(batch, torch.Tensor) and batch.dim() == 2 and not batch.is_floating_point()


#: per-token opposition splits positions into groups; each group runs ONE forward truncated
#: after its last position, then one vmapped backward per chunk of K positions (retain_graph).
#: A group of g positions costs one forward (~1/3 of a fwd+bwd) plus on average g/2 positions
#: of backward it could have truncated away; per position that is ~1/(3g) + g/(3S) of a full
#: fwd+bwd, smallest at g = sqrt(S) (S = sequence length): 23 positions at S = 512.


def _token_batch(fmodel, loss_fn, batch, targets, acc, chunk_mb, notes, positions=None) -> None:
    with torch.no_grad():
        full = loss_fn(batch, fmodel).float()
    if full.dim() == 1:  # one loss per row: token == sequence
        notes.append("per-example loss has one value per row: token = sequence")
        _sequence_or_position_batch(fmodel, loss_fn, batch, targets, acc, "sequence", chunk_mb)
        return
    n_rows, n_pos = full.shape[0], int(full[0].numel())
    full = full.reshape(n_rows, n_pos)
    p0, p1 = positions if positions is not None else (0, n_pos)
    if not 0 <= p0 < p1 <= n_pos:
        raise ValueError(f"positions {positions} outside the {n_pos} loss positions")
    acc.n_examples += n_rows * (p1 - p0)
    # causal token batch (B, S) with losses (B, S-1): the loss at t depends on tokens <= t+1 only
    truncate = _is_causal_token_batch(batch) and n_pos == batch.shape[1] - 1
    dout_total = sum(t.shape[1] if t.transposed else t.shape[0] for t in targets)
    # memory per position of a chunk: its output gradients at every layer, x2 for the
    # vmapped backward's temporaries
    k = _chunk_rows(2 * 4 * n_rows * (n_pos + 1) * dout_total, chunk_mb)
    group = max(k, math.ceil(math.sqrt(n_pos)))
    checked = False
    for g0 in range(p0, p1, group):
        g1 = min(p1, g0 + group)
        sub = batch[:, : g1 + 1] if truncate else batch
        with _Capture(targets) as cap:
            loss = loss_fn(sub, fmodel).float().reshape(n_rows, -1)
        if truncate and not checked:
            checked = True
            if loss.shape[1] != g1 or not torch.allclose(loss.detach(), full[:, :g1], atol=1e-4, rtol=1e-4):
                # not causal in the way assumed: use the full sequences from now on
                notes.append("loss of a truncated sequence differs: ran on full sequences")
                truncate = False
                with _Capture(targets) as cap:
                    loss = loss_fn(batch, fmodel).float().reshape(n_rows, -1)
        outs = cap.flat_outputs()
        ins = {t.name: cap.inputs[t.name] for t in targets}
        # slicing positions s <= t1 is exact only for a verified causal batch whose layers
        # are called once, position-aligned with the tokens
        sliceable = truncate and all(len(v) == 1 and _rows(v[0], n_rows).shape[1] == loss.shape[1] + 1
                                     for v in ins.values())
        for t0 in range(g0, g1, k):
            t1 = min(g1, t0 + k)
            _token_chunk(loss, outs, ins, targets, acc, n_rows, t0, t1, sliceable, chunk_mb, notes)
        cap.clear()
        del outs, loss, ins


def _token_chunk(loss, outs, ins, targets, acc, n_rows, t0, t1, sliceable, chunk_mb, notes) -> None:
    """Per-token gradients of loss positions [t0, t1) from one vmapped backward."""
    kk = t1 - t0
    eye = torch.zeros(kk, *loss.shape, device=loss.device)
    eye[torch.arange(kk), :, t0 + torch.arange(kk)] = 1.0
    try:
        gz = torch.autograd.grad(loss, outs, grad_outputs=eye, is_grads_batched=True, retain_graph=True,
                                 allow_unused=True)
    except RuntimeError as exc:  # an op without a vmap rule: one backward per position
        notes.append(f"batched backward failed ({type(exc).__name__}); one backward per position")
        per_t = [torch.autograd.grad(loss[:, t].sum(), outs, retain_graph=True, allow_unused=True)
                 for t in range(t0, t1)]
        gz = tuple(None if gs[0] is None else torch.stack(gs) for gs in zip(*per_t))
    grads = iter(gz)
    n_s = t1 + 1 if sliceable else None  # outputs at positions > t1 get no gradient
    for t in targets:
        pairs = [(a, next(grads)) for a in ins[t.name]]
        pairs = [(a, g) for a, g in pairs if g is not None]
        if not pairs:
            continue
        a = torch.cat([_rows(a, n_rows)[:, :n_s] for a, _ in pairs], 1)
        g = torch.cat([_rows(g.reshape(kk * n_rows, *g.shape[2:]), kk * n_rows).reshape(kk, n_rows, -1, g.shape[-1])
                       [:, :, :n_s] for _, g in pairs], 2)
        # per-token gradients for (k, row): g[k, row]^T a[row], a few positions at a time
        step = _chunk_rows(4 * n_rows * t.module.weight.numel(), chunk_mb)
        for k0 in range(0, kk, step):
            pe = _per_example(a.unsqueeze(0), g[k0 : k0 + step], t.transposed)  # fresh: overwritable
            acc.add_examples_(t.name, pe.reshape(-1, t.module.weight.numel()))


# ---- references (tests and benchmark) ---------------------------------------------------


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
    fmodel = _grad_params(model)
    acc = OppositionAccumulator({t.name: t.shape for t in targets}, device=targets[0].module.weight.device)
    with torch.enable_grad():
        for batch in batches:
            with _Capture(targets) as cap:
                loss = loss_fn(batch, fmodel).float()
            n_rows = loss.shape[0]
            loss = loss.reshape(n_rows, -1)
            p0, p1 = positions if positions is not None else (0, loss.shape[1])
            acc.n_examples += n_rows * (p1 - p0)
            outs = cap.flat_outputs()
            ins = [_rows(a, n_rows) for t in targets for a in cap.inputs[t.name]]
            for pos in range(p0, p1):
                gz = torch.autograd.grad(loss[:, pos].sum(), outs, retain_graph=True)
                i = 0
                for t in targets:
                    total = None
                    for _ in cap.inputs[t.name]:
                        g = _per_example(ins[i], _rows(gz[i], n_rows), t.transposed)
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
