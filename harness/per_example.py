"""Per-example gradients of a model's weight matrices, per sequence or per token, in chunks.

What Opacus' ``GradSampleModule`` and dattri compute, for any ``torch.nn.Module`` whose weight
matrices are ``nn.Linear`` (or transformers' ``Conv1D``) layers, without materialising the
gradients of a whole batch: they are produced a few examples at a time, in a reused buffer of
at most ``chunk_mb`` MiB, and handed to the caller chunk by chunk::

    from harness.per_example import PerExampleGradients, find_targets

    targets, _ = find_targets(model, include=["*"], exclude=["*embed*", "*lm_head*"])
    grads = PerExampleGradients(model, ckpt.per_example_loss, batches, targets, example="token")
    for chunk in grads:                     # GradientChunk(name, grads (n, out, in), ...)
        total[chunk.name] += chunk.grads.sum(0)
    grads.n_examples                        # examples seen (rows, or rows x positions)

``loss_fn(batch, model)`` returns the unreduced loss: shape (B,) (one value per row), or
(B, S) per token for language models (e.g. `harness.api.Checkpoint.per_example_loss`).

How (the gradient of a loss w.r.t. a linear layer's weight is ``sum_s g_s a_s^T`` over the
positions s that use it): forward hooks capture each layer's input a; ONE batched backward
w.r.t. the layer *outputs* gives the output gradients g (the weight gradients of an ordinary
backward are never formed); a batched matmul per layer then gives every example's gradient.

``sequence``  the summed loss of one row. Rows do not interact in eval mode, so the output
              gradients of the summed batch loss restricted to row b are row b's: one
              backward per batch, then ``G_b^T A_b`` per row.
``token``     one per-token loss. Attention mixes positions, so it needs the output gradients
              of that one loss at every position s <= t: K positions run as one vmapped
              backward (``is_grads_batched``), and for causal token batches each group of
              positions runs on the sequence truncated after its last position (checked
              against the full loss once), about halving the work.

The `interference` metric's gradient opposition is built on this; its brute-force oracles
(one backward per example, ``torch.func.vmap``) live in the tests. Imports torch: import it
where per-example gradients are needed, never from ``import harness``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.func import functional_call

__all__ = [
    "EXAMPLES",
    "FunctionalModel",
    "GradientChunk",
    "LayerCapture",
    "PerExampleGradients",
    "Target",
    "find_targets",
    "layer_rows",
    "outer",
]

#: what one "example" is (see the module docstring)
EXAMPLES = ("sequence", "token")
LossFn = Callable[..., torch.Tensor]
_MB = 1 << 20
#: cap on the per-example gradient chunk of the sequence path (MiB), so that the workspace stays in
#: L3 between the bmm and what the caller does with it (interference: two GEMVs; measured 1.21x ->
#: 1.13x on the 25M config of bench/bench_interference.py)
CACHE_MB = 8.0


class FunctionalModel(torch.nn.Module):
    """Calls ``base`` with ``params`` substituted for its parameters (``functional_call``).

    ``base`` is not registered as a submodule: this wrapper owns no parameters, and the base
    module is never written to. Attribute reads fall through to ``base`` (``config`` etc.).
    """

    def __init__(self, base: torch.nn.Module, params: Mapping[str, torch.Tensor]):
        super().__init__()
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_params", dict(params))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the base module with the substituted parameters."""
        return functional_call(self._base, self._params, args, kwargs, strict=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_base"], name)


# ---- which matrices ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One weight matrix: its parameter name, its module, and whether it is stored (in, out)."""

    name: str
    module: torch.nn.Module
    transposed: bool  # transformers Conv1D: y = x @ W + b with W (in, out)

    @property
    def shape(self) -> tuple[int, int]:
        """The weight's shape as stored."""
        return tuple(self.module.weight.shape)  # type: ignore[return-value]


def _is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def find_targets(
    model: torch.nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
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


# ---- capture and algebra ----------------------------------------------------------------------


class LayerCapture:
    """Forward hooks storing each target's input (detached) and output (in the graph).

    A module called several times per forward keeps one entry per call.
    """

    def __init__(self, targets: Sequence[Target]):
        self.targets = list(targets)
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> LayerCapture:
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
        """Every captured output, target by target, call by call (what a backward needs)."""
        missing = [t.name for t in self.targets if t.name not in self.outputs]
        if missing:
            raise RuntimeError(f"target modules not called by the forward pass: {missing[:5]}")
        return [o for t in self.targets for o in self.outputs[t.name]]

    def clear(self) -> None:
        """Drop the captured tensors."""
        self.inputs.clear()
        self.outputs.clear()


def grad_model(model: torch.nn.Module) -> FunctionalModel:
    """The model run on detached leaf copies (shared storage, no copy) that require grad, so a
    graph exists even for frozen checkpoints and the checkpoint's ``.grad`` stay untouched."""
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    return FunctionalModel(model, params)


def layer_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, *, d) -> (B, P, d) float32: the positions of each example that used the layer."""
    if x.shape[0] != batch:
        if x.dim() >= 2 and x.shape[0] % batch == 0:
            # batch-first flattening (B*S, d) by the model
            return x.reshape(batch, -1, x.shape[-1]).float()
        raise RuntimeError(f"layer input has leading dim {x.shape[0]}, not the batch size {batch}")
    return x.reshape(batch, -1, x.shape[-1]).float()


def outer(a: torch.Tensor, g: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Per-example weight gradients (..., out, in) [or (..., in, out)] from a (..., P, in) and
    g (..., P, out): one batched matmul."""
    return a.transpose(-1, -2) @ g if transposed else g.transpose(-1, -2) @ a


def chunk_rows(per_row_bytes: int, budget_mb: float) -> int:
    """How many rows of ``per_row_bytes`` fit in ``budget_mb`` MiB (at least one)."""
    return max(1, int(budget_mb * _MB // max(per_row_bytes, 1)))


def _is_causal_token_batch(batch: Any) -> bool:
    return isinstance(batch, torch.Tensor) and batch.dim() == 2 and not batch.is_floating_point()


# ---- the public iterator ------------------------------------------------------------------------


@dataclass
class GradientChunk:
    """Per-example gradients of one weight matrix for a few examples.

    ``grads`` is (n, *weight.shape), float32. It may be a view of a buffer that the next chunk
    reuses: use (or overwrite) it before asking for the next chunk, clone it to keep it.
    ``batch`` is the index of the batch, ``rows`` the rows of it (sequence), ``positions`` the
    loss positions ``[t0, t1)`` (token: examples are ordered position-major, then row).
    """

    name: str
    grads: torch.Tensor
    batch: int
    rows: tuple[int, int] | None = None
    positions: tuple[int, int] | None = None


@dataclass
class PerExampleGradients:
    """Iterate the per-example gradients of ``targets`` over ``batches`` (module docstring).

    ``positions`` (token only): restrict the examples to loss positions ``[p0, p1)`` of every
    row. After (or during) iteration ``n_examples`` counts the examples and ``notes`` lists
    what the computation had to fall back on.
    """

    model: torch.nn.Module
    loss_fn: LossFn
    batches: Sequence[Any]
    targets: Sequence[Target]
    example: str = "sequence"
    chunk_mb: float = 256.0
    positions: tuple[int, int] | None = None
    n_examples: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.example not in EXAMPLES:
            raise ValueError(f"example must be one of {EXAMPLES}, got {self.example!r}")
        if not self.targets:
            raise ValueError("no weight matrices selected")
        self._work = torch.empty(0, dtype=torch.float32, device=self.targets[0].module.weight.device)

    def __iter__(self) -> Iterator[GradientChunk]:
        fmodel = grad_model(self.model)
        with torch.enable_grad():
            for i, batch in enumerate(self.batches):
                if self.example == "token":
                    yield from self._token_batch(fmodel, batch, i)
                else:
                    yield from self._sequence_batch(fmodel, batch, i)

    def _workspace(self, numel: int) -> torch.Tensor:
        if self._work.numel() < numel:
            self._work = torch.empty(numel, dtype=torch.float32, device=self._work.device)
        return self._work[:numel]

    def _rows(self, t: Target, a: torch.Tensor, g: torch.Tensor, batch: int) -> Iterator[GradientChunk]:
        """a (R, P, in), g (R, P, out) -> the R per-row gradients, a few rows at a time, each
        chunk written by ``bmm(out=)`` into the reused workspace (<= CACHE_MB and chunk_mb)."""
        numel = t.module.weight.numel()
        R = a.shape[0]
        step = min(R, chunk_rows(4 * numel, min(self.chunk_mb, CACHE_MB)))
        work = self._workspace(step * numel)
        lhs, rhs = (a.transpose(-1, -2), g) if t.transposed else (g.transpose(-1, -2), a)
        for r0 in range(0, R, step):
            r = min(step, R - r0)
            out = work[: r * numel].view(r, *t.shape)
            torch.bmm(lhs[r0 : r0 + r], rhs[r0 : r0 + r], out=out)
            yield GradientChunk(t.name, out, batch, rows=(r0, r0 + r))

    def _sequence_batch(self, fmodel: FunctionalModel, batch: Any, index: int) -> Iterator[GradientChunk]:
        with LayerCapture(self.targets) as cap:
            loss = self.loss_fn(batch, fmodel).float()
        n_rows = loss.shape[0]
        outs = cap.flat_outputs()
        grads = iter(torch.autograd.grad(loss.sum(), outs, allow_unused=True))
        self.n_examples += n_rows
        for t in self.targets:
            ins = cap.inputs.pop(t.name)
            gs = [next(grads) for _ in ins]
            rows = [(layer_rows(a, n_rows), layer_rows(g, n_rows)) for a, g in zip(ins, gs) if g is not None]
            if not rows:
                continue
            if len(ins) == 1:
                yield from self._rows(t, rows[0][0], rows[0][1], index)
            else:  # several calls: a row's gradient is the sum over calls (sum before any nonlinearity)
                yield from self._rows(t, torch.cat([r[0] for r in rows], 1), torch.cat([r[1] for r in rows], 1),
                                      index)
        cap.clear()

    # per-token gradients split positions into groups; each group runs ONE forward truncated
    # after its last position, then one vmapped backward per chunk of K positions (retain_graph).
    # A group of g positions costs one forward (~1/3 of a fwd+bwd) plus on average g/2 positions
    # of backward it could have truncated away; per position that is ~1/(3g) + g/(3S) of a full
    # fwd+bwd, smallest at g = sqrt(S) (S = sequence length): 23 positions at S = 512.
    def _token_batch(self, fmodel: FunctionalModel, batch: Any, index: int) -> Iterator[GradientChunk]:
        with torch.no_grad():
            full = self.loss_fn(batch, fmodel).float()
        if full.dim() == 1:  # one loss per row: token == sequence
            self.notes.append("per-example loss has one value per row: token = sequence")
            yield from self._sequence_batch(fmodel, batch, index)
            return
        targets = self.targets
        n_rows, n_pos = full.shape[0], int(full[0].numel())
        full = full.reshape(n_rows, n_pos)
        p0, p1 = self.positions if self.positions is not None else (0, n_pos)
        if not 0 <= p0 < p1 <= n_pos:
            raise ValueError(f"positions {self.positions} outside the {n_pos} loss positions")
        self.n_examples += n_rows * (p1 - p0)
        # causal token batch (B, S) with losses (B, S-1): the loss at t depends on tokens <= t+1 only
        truncate = _is_causal_token_batch(batch) and n_pos == batch.shape[1] - 1
        dout_total = sum(t.shape[1] if t.transposed else t.shape[0] for t in targets)
        # memory per position of a chunk: its output gradients at every layer, x2 for the
        # vmapped backward's temporaries
        k = chunk_rows(2 * 4 * n_rows * (n_pos + 1) * dout_total, self.chunk_mb)
        group = max(k, math.ceil(math.sqrt(n_pos)))
        checked = False
        for g0 in range(p0, p1, group):
            g1 = min(p1, g0 + group)
            sub = batch[:, : g1 + 1] if truncate else batch
            with LayerCapture(targets) as cap:
                loss = self.loss_fn(sub, fmodel).float().reshape(n_rows, -1)
            if truncate and not checked:
                checked = True
                if loss.shape[1] != g1 or not torch.allclose(loss.detach(), full[:, :g1], atol=1e-4, rtol=1e-4):
                    # not causal in the way assumed: use the full sequences from now on
                    self.notes.append("loss of a truncated sequence differs: ran on full sequences")
                    truncate = False
                    with LayerCapture(targets) as cap:
                        loss = self.loss_fn(batch, fmodel).float().reshape(n_rows, -1)
            outs = cap.flat_outputs()
            ins = {t.name: cap.inputs[t.name] for t in targets}
            # slicing positions s <= t1 is exact only for a verified causal batch whose layers
            # are called once, position-aligned with the tokens
            sliceable = truncate and all(len(v) == 1 and layer_rows(v[0], n_rows).shape[1] == loss.shape[1] + 1
                                         for v in ins.values())
            for t0 in range(g0, g1, k):
                t1 = min(g1, t0 + k)
                yield from self._token_chunk(loss, outs, ins, n_rows, t0, t1, sliceable, index)
            cap.clear()
            del outs, loss, ins

    def _token_chunk(self, loss: torch.Tensor, outs: list[torch.Tensor], ins: dict[str, list[torch.Tensor]],
                     n_rows: int, t0: int, t1: int, sliceable: bool, index: int) -> Iterator[GradientChunk]:
        """Per-token gradients of loss positions [t0, t1) from one vmapped backward."""
        kk = t1 - t0
        eye = torch.zeros(kk, *loss.shape, device=loss.device)
        eye[torch.arange(kk), :, t0 + torch.arange(kk)] = 1.0
        try:
            gz = torch.autograd.grad(loss, outs, grad_outputs=eye, is_grads_batched=True, retain_graph=True,
                                     allow_unused=True)
        except RuntimeError as exc:  # an op without a vmap rule: one backward per position
            self.notes.append(f"batched backward failed ({type(exc).__name__}); one backward per position")
            per_t = [torch.autograd.grad(loss[:, t].sum(), outs, retain_graph=True, allow_unused=True)
                     for t in range(t0, t1)]
            gz = tuple(None if gs[0] is None else torch.stack(gs) for gs in zip(*per_t))
        grads = iter(gz)
        n_s = t1 + 1 if sliceable else None  # outputs at positions > t1 get no gradient
        for t in self.targets:
            pairs = [(a, next(grads)) for a in ins[t.name]]
            pairs = [(a, g) for a, g in pairs if g is not None]
            if not pairs:
                continue
            a = torch.cat([layer_rows(a, n_rows)[:, :n_s] for a, _ in pairs], 1)
            g = torch.cat([layer_rows(g.reshape(kk * n_rows, *g.shape[2:]), kk * n_rows)
                           .reshape(kk, n_rows, -1, g.shape[-1])[:, :, :n_s] for _, g in pairs], 2)
            # per-token gradients for (k, row): g[k, row]^T a[row], a few positions at a time
            step = chunk_rows(4 * n_rows * t.module.weight.numel(), self.chunk_mb)
            for k0 in range(0, kk, step):
                pe = outer(a.unsqueeze(0), g[k0 : k0 + step], t.transposed)  # fresh: the caller may overwrite
                yield GradientChunk(t.name, pe.reshape(-1, *t.shape), index,
                                    positions=(t0 + k0, t0 + min(kk, k0 + step)))
