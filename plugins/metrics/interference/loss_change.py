"""Per-example losses, their on-disk cache, and one optimiser step that leaves the model alone.

Loss-change interference needs the per-example (per-token for LMs) losses of one fixed batch
before and after a change of the weights:

* dt = t (pair scope): the losses of consecutive checkpoints. Each checkpoint's losses are
  cached by `save_losses` (safetensors, one file per model_id and step) at checkpoint scope and
  read back by `load_losses` at pair scope, so the previous checkpoint never needs reloading.
* dt = 1 (checkpoint scope): the losses after ONE optimiser step from the checkpoint.
  `one_step_parameters` computes the updated weights as new tensors (the checkpoint's model is
  never modified, and no second module is built: `FunctionalModel` runs the original module
  with the new tensors through ``torch.func.functional_call``).

Stored optimiser state (``Checkpoint.optimizer_state()``) is accepted as a mapping::

    {"optimizer": "AdamW",            # a class of torch.optim, by name (case-insensitive)
     "state_dict": opt.state_dict()}   # its param ids follow model.parameters() order,
                                      # or the groups carry "param_names" (torch >= 2.5)
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harness.per_example import FunctionalModel  # re-exported: the one functional wrapper

logger = logging.getLogger(__name__)

__all__ = [
    "FunctionalModel",
    "StepInfo",
    "example_losses",
    "load_losses",
    "one_step_parameters",
    "resolve_optimizer_class",
    "save_losses",
]

LossFn = Callable[[Any, torch.nn.Module], torch.Tensor]


def example_losses(loss_fn: LossFn, batches: Sequence[Any], model: torch.nn.Module | None = None) -> torch.Tensor:
    """Per-example losses of every batch, flattened and concatenated (>= fp32, CPU, no grad)."""
    out = []
    with torch.no_grad():
        for b in batches:
            x = loss_fn(b, model).detach()
            # at least fp32; fp64 losses stay fp64 (small changes of small models need it)
            out.append(x.to(torch.promote_types(x.dtype, torch.float32)).reshape(-1).cpu())
    if not out:
        raise ValueError("no batches to evaluate")
    return torch.cat(out)


# ---- cache ------------------------------------------------------------------------------

CACHE_FILE = "losses.safetensors"


def save_losses(directory: Path, losses: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write per-split loss vectors (and provenance in the header) to ``directory``."""
    path = Path(directory) / CACHE_FILE
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in losses.items()}, str(tmp), metadata={"meta": json.dumps(dict(meta))})
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_losses(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Losses and metadata saved by `save_losses`, or None when there is no cache."""
    path = Path(directory) / CACHE_FILE
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    return load_file(str(path)), meta


# ---- one optimiser step ---------------------------------------------------------------


def resolve_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """A ``torch.optim`` optimiser class by (case-insensitive, optionally dotted) name.

    Only torch.optim is searched: a name from a checkpoint never imports arbitrary code.
    """
    short = str(name).rsplit(".", 1)[-1].lower()
    for attr in dir(torch.optim):
        obj = getattr(torch.optim, attr)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and attr.lower() == short:
            return obj
    raise ValueError(f"optimizer {name!r} is not a torch.optim class")


@dataclass
class StepInfo:
    """How the step was taken (goes into the records' ``extra``)."""

    optimizer: str
    lr: float
    source: str  # "checkpoint" (stored state) or "fresh"
    n_update_examples: int = 0
    update_loss: float = float("nan")
    notes: list[str] = field(default_factory=list)


def _build_from_state(
    state: Mapping[str, Any], names: list[str], params: list[torch.Tensor], lr: float | None, fallback_lr: float | None
) -> tuple[torch.optim.Optimizer, StepInfo]:
    if "state_dict" not in state or not any(k in state for k in ("optimizer", "class")):
        raise ValueError(
            "optimizer_state() must be a mapping with keys 'optimizer' (a torch.optim class name) and "
            f"'state_dict' (the optimizer's state_dict); got keys {sorted(state)}"
        )
    cls = resolve_optimizer_class(state.get("optimizer", state.get("class")))
    # load_state_dict keeps same-device tensors by reference and step() updates them in place:
    # copy, so the family's stored state is never polluted
    sd = copy.deepcopy(state["state_dict"])
    by_name = dict(zip(names, params))
    groups = []
    for g in sd["param_groups"]:
        hyper = {k: v for k, v in g.items() if k not in ("params", "param_names")}
        if "param_names" in g:
            missing = [n for n in g["param_names"] if n not in by_name]
            if missing:
                raise ValueError(f"stored optimizer state names unknown parameters: {missing[:5]}")
            ps = [by_name[n] for n in g["param_names"]]
        else:
            if max(g["params"], default=-1) >= len(params):
                raise ValueError(
                    f"stored optimizer state has parameter ids up to {max(g['params'])} but the model has "
                    f"{len(params)} parameters: ids must follow model.parameters() order"
                )
            ps = [params[i] for i in g["params"]]
        groups.append({"params": ps, **hyper})
    opt = cls(groups)
    opt.load_state_dict(sd)
    notes = []
    for g in opt.param_groups:
        if lr is not None:
            g["lr"] = lr
        elif not g.get("lr"):
            # ZSL: the final checkpoint's scheduled lr is 0; step at the initial lr instead
            new = g.get("initial_lr") or fallback_lr
            if not new:
                raise ValueError("stored learning rate is 0 and neither initial_lr nor a learning rate is known")
            notes.append(f"stored lr 0 replaced by {new:g}")
            g["lr"] = new
    lrs = sorted({float(g["lr"]) for g in opt.param_groups})
    return opt, StepInfo(optimizer=cls.__name__, lr=lrs[0] if len(lrs) == 1 else float("nan"), source="checkpoint",
                         notes=notes + ([f"per-group lr {lrs}"] if len(lrs) > 1 else []))


def one_step_parameters(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    *,
    optimizer: str,
    lr: float | None,
    weight_decay: float = 0.0,
    stored_state: Mapping[str, Any] | None = None,
    fallback_lr: float | None = None,
) -> tuple[dict[str, torch.Tensor], StepInfo]:
    """The weights after one optimiser step on the mean per-example loss of ``batches``.

    ``optimizer``: "sgd" or "adamw" (fresh state, at ``lr``), or "checkpoint" (``stored_state``
    restored; ``lr`` overrides its learning rate when given, ``fallback_lr`` replaces a stored 0).
    Returns new tensors keyed like ``model.named_parameters()``; ``model`` is untouched
    (its parameters are cloned; gradients go to the clones). No gradient clipping (as ZSL).
    """
    names, originals = zip(*model.named_parameters())
    new = [p.detach().clone().requires_grad_(p.requires_grad) for p in originals]
    if optimizer == "checkpoint":
        if stored_state is None:
            raise ValueError("optimizer=checkpoint but the checkpoint has no optimizer state")
        opt, info = _build_from_state(stored_state, list(names), new, lr, fallback_lr)
    else:
        if lr is None:
            raise ValueError("no learning rate: the checkpoint ref has none; set the metric's lr parameter")
        trainable = [p for p in new if p.requires_grad]
        if optimizer == "sgd":
            opt = torch.optim.SGD(trainable, lr=lr, weight_decay=weight_decay)
        elif optimizer == "adamw":
            opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        info = StepInfo(optimizer=type(opt).__name__, lr=float(lr), source="fresh")
    fmodel = FunctionalModel(model, dict(zip(names, new)))
    n, total = 0, 0.0
    with torch.enable_grad():
        for b in batches:  # one graph at a time: backward the sum, divide by N at the end
            loss = loss_fn(b, fmodel).float()
            n += int(loss.numel())
            loss.sum().backward()
            total += float(loss.detach().sum())
    if n == 0:
        raise ValueError("the update batch produced no per-example losses")
    for p in new:
        if p.grad is not None:
            p.grad.div_(n)
    opt.step()
    info.n_update_examples = n
    info.update_loss = total / n
    return {k: v.detach() for k, v in zip(names, new)}, info
