"""`HarnessCallback`: capture learning dynamics from a transformers ``Trainer`` run.

    from harness.capture import HarnessCallback
    cb = HarnessCallback("runs/tiny", val_batch=val_ids, schedule="pythia")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    # then: python -m harness model=local_run model.root=runs/tiny metric=loss

When: at ``on_pre_optimizer_step`` of update N+1, when N is in the schedule. The weights then
are those after N updates and ``.grad`` holds the gradient of the batch of update N+1 (the
pico-train definition of ``train_gradients`` at step N), already averaged over DDP ranks and
unscaled by the fp16 grad scaler. The last step of training is saved at ``on_train_end`` with
validation data only (as pico-train).

Caveat (documented in docs/capture.md): Trainer clips gradients *before* this event. With
``max_grad_norm > 0`` a clipped step stores the clipped gradient; ``step.json`` then says
``train_gradients_clipped: true``. Set ``max_grad_norm=0`` to store raw gradients always.

The loss log is exact per update: a forward hook reads each micro-batch's loss and token
count (undoing Trainer's ``num_items_in_batch`` normalisation), so ``loss`` at row ``step=k``
is the token-mean loss of update k's batch at the weights before it, whatever
``logging_steps`` is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from harness.capture.recorder import Recorder
from harness.capture.schedule import Schedule

logger = logging.getLogger(__name__)


class HarnessCallback(TrainerCallback):
    """Records checkpoints, raw gradients, validation losses and the loss log (see module doc).

    Args:
        output_dir: the run directory to write (``model.root`` of the ``local_run`` family).
        val_batch: the fixed validation batch, token ids (B, S) (or a dict with ``input_ids``).
        schedule: a `Schedule`, a preset name (``pythia``, ``pico``), ``every`` as an int, an
            explicit list of steps, or a dict of `Schedule` arguments.
        modules: glob patterns on module names for the stored gradients (None: per-architecture
            defaults, see `harness.capture.recorder.DEFAULT_MODULES`).
        model_id, size: identity of the run (defaults: the directory name, the hidden size).
        suite: a suite directory to register this run in (several sizes, same data order).
        val_losses: store per-token validation losses at each checkpoint.
        optimizer_state: store the optimizer state (``optimizer.pt``) at each checkpoint.
        save_tokenizer: save the Trainer's ``processing_class`` into each checkpoint.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        val_batch: Any,
        schedule: Schedule | str | int | Sequence[int] | dict | None = None,
        modules: Sequence[str] | None = None,
        model_id: str | None = None,
        size: str | None = None,
        suite: str | os.PathLike[str] | None = None,
        val_losses: bool = True,
        optimizer_state: bool = False,
        save_tokenizer: bool = True,
    ):
        self.recorder = Recorder(output_dir, val_batch=val_batch, schedule=schedule, modules=modules,
                                 model_id=model_id, size=size, suite=suite, val_losses=val_losses,
                                 optimizer_state=optimizer_state)
        self.save_tokenizer = save_tokenizer
        self._hook = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_tokens: torch.Tensor | None = None
        self._tokens_step = 0
        self._tokens_seen = 0
        self._max_grad_norm = 0.0

    @property
    def schedule(self) -> Schedule:
        """The checkpoint schedule of this capture."""
        return self.recorder.schedule

    # -- the loss/token hook ------------------------------------------------------------
    def _forward_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            self._tokens_step += int(ids.numel())
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        labels = kwargs.get("labels")
        if loss is None or labels is None:
            return
        n = (labels[..., 1:] != -100).sum()
        loss = loss.detach().float()
        total = kwargs.get("num_items_in_batch")
        # with num_items_in_batch the model returns sum / num_items_in_batch: recover the sum
        s = loss * torch.as_tensor(total, dtype=torch.float32, device=loss.device) if total is not None else loss * n
        self._loss_sum = s if self._loss_sum is None else self._loss_sum + s
        self._loss_tokens = n if self._loss_tokens is None else self._loss_tokens + n

    def _step_loss(self) -> torch.Tensor | None:
        if self._loss_sum is None or self._loss_tokens is None:
            return None
        s, n = self._loss_sum, self._loss_tokens.to(self._loss_sum.dtype)
        if self.recorder.world_size > 1 and torch.distributed.is_initialized():
            both = torch.stack([s, n])
            torch.distributed.all_reduce(both)
            s, n = both[0], both[1]
        self._loss_sum = self._loss_tokens = None
        return s / n

    # -- Trainer events -----------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        """Write the run manifest and the validation batch before the first step."""
        tok = processing_class if self.save_tokenizer else None
        self.recorder.start(model, tokenizer=tok, meta={"trainer": "transformers",
                                                        "max_grad_norm": float(args.max_grad_norm or 0)})
        self._max_grad_norm = float(args.max_grad_norm or 0)
        if self._max_grad_norm > 0:
            logger.info("max_grad_norm=%g: clipped steps store clipped train gradients (flagged in step.json)",
                        self._max_grad_norm)
        self._hook = model.register_forward_hook(self._forward_hook, with_kwargs=True)
        self._tokens_seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        """Write a scheduled checkpoint (weights, gradients, optimizer state) before update N -> N+1."""
        step = int(state.global_step)  # updates done so far: the weights are those of step N
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None
        tokens_before = self._tokens_seen
        self._tokens_seen += self._tokens_step * self.recorder.world_size
        self._tokens_step = 0
        if step in self.schedule:
            grads = self.recorder.grads_from_params(model) if self.recorder.is_writer else None
            meta: dict[str, Any] = {"epoch": state.epoch}
            if self._max_grad_norm > 0 and grads is not None:
                norm = torch.linalg.vector_norm(torch.stack([
                    torch.linalg.vector_norm(p.grad.detach().float()) for p in model.parameters() if p.grad is not None]))
                meta["train_gradients_clipped"] = bool(float(norm) >= self._max_grad_norm * (1 - 1e-3))
            self.recorder.write_checkpoint(step, model, train_grads=grads, learning_rate=lr, tokens_seen=tokens_before,
                                           optimizer=optimizer, meta=meta)
        loss = self._step_loss()
        if loss is not None:
            self.recorder.log_loss(step + 1, loss, lr, self._tokens_seen)

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kw):
        """Write the final step (when the schedule asks for it) and flush the loss log."""
        step = int(state.global_step)
        if self.schedule.final and step not in self.recorder.written:
            self.recorder.write_checkpoint(step, model, train_grads=None, learning_rate=None,
                                           tokens_seen=self._tokens_seen, optimizer=optimizer,
                                           meta={"epoch": state.epoch, "final": True})
        self.recorder.finish()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
