"""The analysis objective as a function of one flat parameter vector, and its Hessian-vector products.

The subspace metric needs the Hessian of the mean loss over a fixed analysis batch with
respect to (a subset of) the parameters. `FlatObjective` turns a `Checkpoint` into that
function of a flat vector ``x`` (length P): the selected parameter tensors (module glob
patterns), optionally only a seeded random subset of their coordinates, everything else held
fixed. The model is evaluated through `torch.func.functional_call`, so the checkpoint's own
``per_example_loss(batch, model=...)`` defines the loss (per example for classifiers, per
token for LMs) and the stored weights are never modified.

Three ways to multiply by the Hessian, all exact (they differ in cost and memory only)::

    obj = FlatObjective(checkpoint, batches, modules=["*.mlp.*"])
    op = obj.hvp_operator("double_backward")   # or "fwd_rev", "linearize"
    hv = op(v)                                 # H v, a tensor like obj.x0; op.count products

- ``fwd_rev``: ``torch.func.jvp(torch.func.grad(f))`` forward-over-reverse, recomputed per
  product, one analysis batch at a time: the smallest memory (one batch's graph), the
  highest cost per product.
- ``double_backward``: one ``create_graph`` backward, then ``autograd.grad(g, x, v,
  retain_graph=True)`` per product (PyHessian's way). Memory: the double-backward graph of
  the whole analysis batch, held once, not growing with the number of products.
- ``linearize``: ``torch.func.linearize(torch.func.grad(f), x)`` traces the JVP once and
  replays it; similar memory to ``double_backward``, but the tracing is slow to set up and
  fails on models with data-dependent Python control flow.

Imports torch: plugin code, never imported by ``import harness``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.api import Checkpoint
from harness.lm import select_names

logger = logging.getLogger(__name__)

HVP_METHODS = ("double_backward", "fwd_rev", "linearize")


# ---- batches: fingerprint, pool, take ---------------------------------------------------


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for key in sorted(batch):
            yield from _tensors(batch[key])
    elif isinstance(batch, (list, tuple)):
        for item in batch:
            yield from _tensors(item)


def batches_fingerprint(batches: Sequence[Any], source: str | None = "") -> str:
    """sha256 (16 hex) over the shapes, dtypes and bytes of every tensor in the analysis batch."""
    h = hashlib.sha256(str(source or "").encode())
    for batch in batches:
        for t in _tensors(batch):
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


def batch_len(batch: Any) -> int:
    """Number of examples (size of dim 0) of a tensor, or a tuple/list/dict of tensors."""
    for t in _tensors(batch):
        return int(t.shape[0])
    raise TypeError(f"cannot find a tensor in a batch of type {type(batch).__name__}")


def concat_batches(batches: Sequence[Any]) -> Any:
    """Concatenate batches along dim 0 (tensors, or tuples/lists/dicts of tensors)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(batches), dim=0)
    if isinstance(first, dict):
        return {k: concat_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(concat_batches([b[i] for b in batches]) for i in range(len(first)))
    raise TypeError(f"cannot concatenate batches of type {type(first).__name__}")


def take(batch: Any, index: torch.Tensor) -> Any:
    """The examples ``index`` (dim 0) of a batch."""
    if isinstance(batch, torch.Tensor):
        return batch[index.to(batch.device)]
    if isinstance(batch, dict):
        return {k: take(v, index) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take(v, index) for v in batch)
    raise TypeError(f"cannot index a batch of type {type(batch).__name__}")


# ---- model state for the analysis ------------------------------------------------------


@contextlib.contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, norm statistics frozen) and, for transformers models, eager
    attention (fused SDPA/flash kernels have no double backward); both restored afterwards."""
    was_training = model.training
    config = getattr(model, "config", None)
    old_attn = getattr(config, "_attn_implementation", None) if config is not None else None
    switched = False
    model.eval()
    try:
        if old_attn not in (None, "eager"):
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")
            else:  # older transformers
                config._attn_implementation = "eager"
            switched = True
            logger.debug("attention implementation %s -> eager for the Hessian analysis", old_attn)
        yield
    finally:
        if switched:
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(old_attn)
            else:
                config._attn_implementation = old_attn
        model.train(was_training)


class _Functional(nn.Module):
    """Calls ``model`` with the parameter tensors in ``self.tensors`` (torch.func.functional_call),
    so a checkpoint's ``per_example_loss(batch, model=self)`` is a function of them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", model)  # not a submodule: no parameters of its own
        self.tensors: dict[str, torch.Tensor] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.inner, self.tensors, args, kwargs)

    def __getattr__(self, name: str) -> Any:  # config, device, ... of the wrapped model
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "inner"), name)


class HVPOperator:
    """``v -> H v`` with a product counter (``count``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], method: str):
        self._fn, self.method, self.count = fn, method, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return self._fn(v)


# ---- the objective ---------------------------------------------------------------------


class FlatObjective:
    """Mean loss over fixed analysis batches as a function of a flat parameter vector.

    Args:
        checkpoint: provides ``model`` and ``per_example_loss(batch, model=...)``.
        batches: the analysis batches (their union is the analysis batch).
        modules: glob patterns on parameter names (``None``: all parameters).
        n_coords: if set, only this many coordinates, drawn without replacement (seeded)
            from the selected tensors, are variables.
        seed: seed of the coordinate draw.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        batches: Sequence[Any],
        *,
        modules: Sequence[str] | None = None,
        n_coords: int | None = None,
        seed: int = 0,
    ):
        if not batches:
            raise ValueError("the analysis batch is empty (no evaluation batches)")
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.batches = list(batches)
        named = dict(self.model.named_parameters())
        self.names = select_names(list(named), list(modules) if modules is not None else None)
        if not self.names:
            raise ValueError(
                f"modules={list(modules or [])} match no parameter; names look like: {', '.join(list(named)[:5])}"
            )
        dtypes = {named[n].dtype for n in self.names}
        if len(dtypes) > 1:
            raise ValueError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}; select one dtype")
        self.dtype = dtypes.pop()
        if self.dtype in (torch.float16, torch.bfloat16):
            logger.warning("Hessian analysis in %s: eigenvalues will be imprecise; prefer float32", self.dtype)
        self.shapes = [(n, named[n].shape, named[n].numel()) for n in self.names]
        self.fixed = {n: p.detach() for n, p in named.items() if n not in set(self.names)}
        self.n_selected = sum(numel for _, _, numel in self.shapes)
        self.index: np.ndarray | None = None
        if n_coords is None:
            self.x0 = torch.cat([named[n].detach().reshape(-1) for n in self.names])
            self._segments = None
        else:
            if n_coords > self.n_selected:
                raise ValueError(f"n_coords={n_coords} exceeds the {self.n_selected} selected parameters")
            # NOTE: numpy's choice without replacement needs O(n_coords) memory, unlike
            # torch.randperm(n_selected), which would allocate 8 bytes per model parameter.
            self.index = np.sort(np.random.default_rng(int(seed)).choice(self.n_selected, n_coords, replace=False))
            # per tensor: (local flat indices, slice of x); tensors hit by no coordinate stay fixed.
            # Only these indices are held: no flat copy of the selected tensors.
            starts = np.cumsum([0] + [numel for _, _, numel in self.shapes])
            self._segments = {}
            pieces = []
            for j, (name, _, _) in enumerate(self.shapes):
                lo, hi = np.searchsorted(self.index, [starts[j], starts[j + 1]])
                if hi > lo:
                    local = torch.as_tensor(self.index[lo:hi] - starts[j], device=named[name].device)
                    self._segments[name] = (local, int(lo), int(hi))
                    pieces.append(named[name].detach().reshape(-1)[local])
                else:
                    self.fixed[name] = named[name].detach()
            self.x0 = torch.cat(pieces)
            self._base = {n: named[n].detach() for n in self._segments}
        self.P = int(self.x0.numel())
        self._wrapper = _Functional(self.model)
        with torch.no_grad():
            self.counts = [int(self._loss(self.x0, b).numel()) for b in self.batches]
        self.n_total = sum(self.counts)

    # -- description for provenance and the eigenvector cache --------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "n_params": self.P,
            "n_selected": self.n_selected,
            "tensors": len(self.names),
            "coords_sha": (
                hashlib.sha256(self.index.astype(np.int64).tobytes()).hexdigest()[:16] if self.index is not None else None
            ),
            "dtype": str(self.dtype).replace("torch.", ""),
            "loss_terms": self.n_total,
        }

    # -- the function -------------------------------------------------------------------
    def tensors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(self.fixed)
        if self._segments is None:
            offset = 0
            for name, shape, numel in self.shapes:
                out[name] = x[offset : offset + numel].view(shape)
                offset += numel
        else:
            for name, (local, lo, hi) in self._segments.items():
                base = self._base[name]
                out[name] = base.reshape(-1).scatter(0, local, x[lo:hi]).view(base.shape)
        return out

    def _loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        self._wrapper.tensors = self.tensors(x)
        try:
            return self.checkpoint.per_example_loss(batch, model=self._wrapper)
        finally:
            self._wrapper.tensors = {}

    def batch_sum(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Sum of the loss terms of analysis batch ``i`` divided by all terms: the batch's share
        of the mean loss."""
        return self._loss(x, self.batches[i]).sum() / self.n_total

    def loss(self, x: torch.Tensor | None = None) -> float:
        x = self.x0 if x is None else x
        with torch.no_grad():
            return float(sum(self.batch_sum(x, i) for i in range(len(self.batches))))

    def gradient(self, batch: Any | None = None) -> torch.Tensor:
        """Gradient of the mean loss over the analysis batch, or over ``batch`` if given."""
        x = self.x0.detach().clone().requires_grad_(True)
        if batch is not None:
            loss = self._loss(x, batch).mean()
            return torch.autograd.grad(loss, x)[0].detach()
        g = torch.zeros_like(self.x0)
        for i in range(len(self.batches)):
            g += torch.autograd.grad(self.batch_sum(x, i), x)[0]
        return g

    # -- Hessian-vector products ---------------------------------------------------------
    def hvp_operator(self, method: str = "double_backward") -> HVPOperator:
        if method == "fwd_rev":
            grads = [torch.func.grad(lambda x, i=i: self.batch_sum(x, i)) for i in range(len(self.batches))]
            x0 = self.x0.detach()

            def fwd_rev(v: torch.Tensor) -> torch.Tensor:
                out = torch.zeros_like(x0)
                for grad_i in grads:  # one batch's graph alive at a time
                    out += torch.func.jvp(grad_i, (x0,), (v,))[1]
                return out

            return HVPOperator(fwd_rev, method)
        if method == "double_backward":
            x = self.x0.detach().clone().requires_grad_(True)
            g = sum(torch.autograd.grad(self.batch_sum(x, i), x, create_graph=True)[0] for i in range(len(self.batches)))
            self.grad_full = g.detach()

            def double_backward(v: torch.Tensor) -> torch.Tensor:
                return torch.autograd.grad(g, x, v, retain_graph=True)[0].detach()

            return HVPOperator(double_backward, method)
        if method == "linearize":
            def full(x: torch.Tensor) -> torch.Tensor:
                return sum(self.batch_sum(x, i) for i in range(len(self.batches)))

            with warnings.catch_warnings():  # torch.fx const-folding chatter, not actionable
                warnings.simplefilter("ignore", UserWarning)
                g, jvp_fn = torch.func.linearize(torch.func.grad(full), self.x0.detach())
            self.grad_full = g.detach()
            return HVPOperator(lambda v: jvp_fn(v).detach(), method)
        raise ValueError(f"hvp={method!r}: allowed one of {', '.join(HVP_METHODS)}")
