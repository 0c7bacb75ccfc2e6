"""The framework-agnostic recorder: one recording path for every trainer integration.

The Trainer and Lightning callbacks only tell the recorder *when* (optimizer step N, right
before update N -> N+1, gradients of that update's batch in ``.grad``) and *what* (model,
optimizer, learning rate, tokens seen); the recorder writes the run directory described in
`harness.capture.layout`, one checkpoint atomically at a time::

    rec = Recorder("runs/my_run", val_batch=val_ids, schedule=Schedule(every=50))
    rec.start(model)
    ...  # inside the training loop, after backward, before optimizer.step():
    if step in rec.schedule:
        rec.write_checkpoint(step, model, train_grads=rec.grads_from_params(model), learning_rate=lr,
                             tokens_seen=tokens, optimizer=opt)
    rec.log_loss(step + 1, loss, lr, tokens)     # row = update number (as Trainer logs)
    rec.finish()

Gradients are stored as float32 whatever the training precision (bf16/fp16 autocast or a
half-precision model), in pico-train's learning-dynamics files (`harness.learning_dynamics`),
keyed ``layers.<i>.<module>``; they are the gradient of the *mean* token loss of the batch
(pico-train's sub-batch count is 1 here), so they need no rescaling on read.

Only rank 0 of a distributed run writes (`is_writer`); gradients read from ``.grad`` after
backward are already averaged over ranks by DDP. Imports torch: never imported by ``import harness``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from harness import learning_dynamics as ld
from harness.api import ParameterError
from harness.atomic import swap_in
from harness.capture import layout as L
from harness.capture.schedule import Schedule

logger = logging.getLogger(__name__)

#: default gradient modules per ``config.model_type``: value (or fused qkv), attention output
#: and MLP down projections, as pico-train stores (glob patterns on module names)
DEFAULT_MODULES: dict[str, tuple[str, ...]] = {
    "gpt_neox": ("*.attention.query_key_value", "*.attention.dense", "*.mlp.dense_4h_to_h"),
    "llama": ("*.self_attn.v_proj", "*.self_attn.o_proj", "*.mlp.down_proj"),
    "mistral": ("*.self_attn.v_proj", "*.self_attn.o_proj", "*.mlp.down_proj"),
    "qwen2": ("*.self_attn.v_proj", "*.self_attn.o_proj", "*.mlp.down_proj"),
    "olmo": ("*.self_attn.v_proj", "*.self_attn.o_proj", "*.mlp.down_proj"),
    "gpt2": ("*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_proj"),
    "pico_decoder": ("*.attention.v_proj", "*.attention.o_proj", "*.swiglu.w_2"),
}
#: any other architecture: every 2-D weight inside a numbered block
FALLBACK_MODULES = ("*",)

_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")


def ld_key(module_name: str) -> str | None:
    """``gpt_neox.layers.3.attention.dense`` -> ``layers.3.attention.dense`` (None outside blocks)."""
    m = _BLOCK.search(module_name)
    return f"layers.{m.group(1)}.{m.group(2)}" if m else None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0 and 1 outside distributed training)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def select_gradient_params(model: torch.nn.Module, modules: Sequence[str] | None) -> dict[str, torch.nn.Parameter]:
    """``{layers.<i>.<module>: weight parameter}`` of the 2-D block weights matching ``modules``
    (globs on module names, e.g. ``*.mlp.dense_4h_to_h``; None = defaults for the architecture)."""
    if modules is None:
        mt = getattr(getattr(model, "config", None), "model_type", None)
        modules = DEFAULT_MODULES.get(mt, FALLBACK_MODULES)
    out: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters():
        if not name.endswith(".weight") or p.dim() != 2 or not p.requires_grad:
            continue
        mod = name[: -len(".weight")]
        key = ld_key(mod)
        if key is None or not any(fnmatch.fnmatchcase(mod, pat) for pat in modules):
            continue
        if key in out:
            raise ValueError(f"two parameters map to learning-dynamics key {key!r}")
        out[key] = p
    if not out:
        raise ParameterError("modules", list(modules), "globs matching 2-D weights inside numbered blocks "
                             "(e.g. '*.mlp.down_proj'); none matched this model")
    return out


def _as_input_ids(batch: Any) -> torch.Tensor:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if mask is not None and not bool(torch.as_tensor(mask).bool().all()):
            raise ValueError("val_batch must be full token blocks without padding (attention_mask has zeros)")
        batch = batch["input_ids"]
    ids = torch.as_tensor(batch)
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"val_batch must be integer token ids of shape (B, S); got {tuple(ids.shape)} {ids.dtype}")
    return ids.long().cpu()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)


class Recorder:
    """Writes one captured run: manifest, validation batch, loss log and atomic checkpoints."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        val_batch: Any,
        schedule: Schedule | str | int | Sequence[int] | dict | None = None,
        modules: Sequence[str] | None = None,
        model_id: str | None = None,
        size: str | None = None,
        suite: str | os.PathLike[str] | None = None,
        val_losses: bool = True,
        optimizer_state: bool = False,
        train_gradients: bool = True,
        flush_every: int = 50,
    ):
        self.root = Path(root)
        self.val_ids = _as_input_ids(val_batch)
        self.schedule = Schedule.from_spec(schedule)
        self.modules = list(modules) if modules is not None else None
        self.model_id = model_id or self.root.name
        self.size = size
        self.suite = Path(suite) if suite is not None else None
        self.val_losses, self.optimizer_state, self.train_gradients = bool(val_losses), bool(optimizer_state), bool(
            train_gradients)
        self.flush_every = int(flush_every)
        self.rank, self.world_size = rank_and_world()
        self.written: list[int] = []
        self.timings: dict[str, float] = {"checkpoint_s": 0.0, "gradients_s": 0.0, "save_s": 0.0}
        self._log_buffer: list[tuple[int, Any, float | None, int | None]] = []
        self._params: dict[str, torch.nn.Parameter] | None = None
        self._started = False

    @property
    def is_writer(self) -> bool:
        """Whether this process writes files (rank 0 only)."""
        return self.rank == 0

    # -- setup ------------------------------------------------------------------------
    def start(self, model: torch.nn.Module, *, tokenizer: Any = None, meta: Mapping[str, Any] | None = None) -> None:
        """Pick the gradient modules and write the manifest and the validation batch (rank 0)."""
        from safetensors.torch import save_file

        self.rank, self.world_size = rank_and_world()
        self._params = select_gradient_params(model, self.modules)
        names = {id(p): n for n, p in model.named_parameters()}
        self.size = self.size or str(getattr(getattr(model, "config", None), "hidden_size", None) or self.model_id)
        self._started = True
        if not self.is_writer:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        save_file({"input_ids": self.val_ids.contiguous()}, str(self.root / L.VAL_BATCH))
        from harness.lm import tokens_fingerprint

        manifest = {
            "format": "harness.capture.run", "version": L.FORMAT_VERSION, "model_id": self.model_id,
            "size": self.size, "n_params": sum(p.numel() for p in model.parameters()),
            "model_type": getattr(getattr(model, "config", None), "model_type", None),
            "gradient_modules": {k: names[id(p)] for k, p in self._params.items()},
            "schedule": {"every": self.schedule.every, "log_until": self.schedule.log_until,
                         "extra": list(self.schedule.extra), "final": self.schedule.final},
            "val_batch": {"shape": list(self.val_ids.shape), "fingerprint": tokens_fingerprint([self.val_ids])},
            "world_size": self.world_size, "val_losses": self.val_losses, "optimizer_state": self.optimizer_state,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **dict(meta or {}),
        }
        L.write_json_atomic(self.root / L.RUN_MANIFEST, manifest)
        if self.suite is not None:
            L.register_in_suite(self.suite, self.root, self.model_id, self.size,
                                {"n_params": manifest["n_params"]})
        self._tokenizer = tokenizer

    # -- gradients ----------------------------------------------------------------------
    def grads_from_params(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The selected parameters' ``.grad`` (the batch of the coming update), float32 on CPU."""
        assert self._params is not None, "call start() first"
        out = {}
        for key, p in self._params.items():
            if p.grad is None:
                raise RuntimeError(f"no gradient on {key} at a checkpoint step (frozen module or no backward yet?)")
            out[key] = p.grad.detach().float().cpu().clone()
        return out

    def val_pass(self, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Gradients of the mean token loss on the validation batch (selected modules only, via
        ``torch.autograd.grad``: parameters' ``.grad`` stay untouched) and its per-token losses."""
        from harness.lm import per_token_loss

        assert self._params is not None, "call start() first"
        was_training = model.training
        device = next(model.parameters()).device
        model.eval()
        try:
            with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                ids = self.val_ids.to(device)
                tok = per_token_loss(_logits(model, ids), ids)
                grads = torch.autograd.grad(tok.mean(), list(self._params.values()))
        finally:
            model.train(was_training)
        return ({k: g.detach().float().cpu() for k, g in zip(self._params, grads)},
                tok.detach().float().cpu())

    # -- writing ---------------------------------------------------------------------------
    def write_checkpoint(
        self,
        step: int,
        model: torch.nn.Module,
        *,
        train_grads: Mapping[str, torch.Tensor] | None,
        learning_rate: float | None,
        tokens_seen: int | None,
        optimizer: torch.optim.Optimizer | None = None,
        tokenizer: Any = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write checkpoint ``step`` into a temporary directory, then rename it into place."""
        if not self.is_writer:
            return None
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        val_grads, val_losses = self.val_pass(model)
        t1 = time.perf_counter()
        ckpts = self.root / "checkpoints"
        ckpts.mkdir(parents=True, exist_ok=True)
        tmp = ckpts / f"{L.PARTIAL_PREFIX}{int(step)}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        state = None
        if any(p.dtype != torch.float32 for p in model.parameters()):
            state = {k: v.detach().float() for k, v in model.state_dict().items()}  # stored as fp32
        model.save_pretrained(str(tmp), state_dict=state)
        tok = tokenizer if tokenizer is not None else getattr(self, "_tokenizer", None)
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok.save_pretrained(str(tmp))
        ld_dir = tmp / ld.LD_DIRNAME
        if train_grads:
            ld.write_split(ld_dir, "train", {"gradients": dict(train_grads)})
        ld.write_split(ld_dir, "val", {"gradients": val_grads})
        if self.val_losses:
            save_file({"loss": val_losses.contiguous()}, str(tmp / L.VAL_LOSSES))
        if self.optimizer_state and optimizer is not None:
            torch.save(optimizer_payload(optimizer, model), tmp / L.OPTIMIZER)
        info = {"step": int(step), "tokens_seen": None if tokens_seen is None else int(tokens_seen),
                "learning_rate": None if learning_rate is None else float(learning_rate),
                "train_gradients": bool(train_grads), "val_loss": float(val_losses.mean()),
                "world_size": self.world_size, **dict(meta or {})}
        L.write_json_atomic(tmp / L.STEP_META, info)  # last: marks the directory complete
        # a re-save of the same step (resumed training) swaps the directory as a whole
        final = swap_in(tmp, L.step_dir(self.root, step))
        self.written.append(int(step))
        self.flush()
        t2 = time.perf_counter()
        self.timings["gradients_s"] += t1 - t0
        self.timings["save_s"] += t2 - t1
        self.timings["checkpoint_s"] += t2 - t0
        logger.debug("captured step %d in %.3fs", step, t2 - t0)
        return final

    def log_loss(self, step: int, loss: Any, learning_rate: float | None, tokens_seen: int | None) -> None:
        """Buffer one loss-log row (``loss`` may be a device tensor: no sync until flush)."""
        if not self.is_writer:
            return
        self._log_buffer.append((int(step), loss, learning_rate, tokens_seen))
        if len(self._log_buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Append the buffered per-step losses to the loss log (one device sync per flush)."""
        if not self.is_writer or not self._log_buffer:
            return
        losses = [float(x) for x in torch.stack([torch.as_tensor(r[1], dtype=torch.float32).detach().cpu()
                                                 for r in self._log_buffer]).tolist()]
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / L.LOSS_LOG, "a") as fh:
            for (step, _, lr, tokens), loss in zip(self._log_buffer, losses):
                fh.write(json.dumps({"step": step, "loss": loss, "learning_rate": lr, "tokens_seen": tokens}) + "\n")
        self._log_buffer.clear()

    def finish(self) -> None:
        """Flush what is buffered at the end of training."""
        self.flush()


def optimizer_payload(optimizer: Any, model: torch.nn.Module) -> dict[str, Any]:
    """``{"optimizer": class name, "state_dict": ...}`` with each param group's ``param_names``,
    so the state maps onto parameters by name whatever the group order (Trainer puts decayed
    and non-decayed parameters in separate groups)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's / Lightning's wrappers
    names = {id(p): n for n, p in model.named_parameters()}
    sd = inner.state_dict()
    for group, live in zip(sd["param_groups"], inner.param_groups):
        group["param_names"] = [names.get(id(p), f"<unnamed {i}>") for i, p in enumerate(live["params"])]
    return {"optimizer": type(inner).__name__, "state_dict": sd}
