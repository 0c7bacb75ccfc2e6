"""`HarnessLightningCallback`: capture learning dynamics from a Lightning run.

Imports ``lightning`` (an optional extra) at module level; ``harness.capture`` imports this
module only when ``HarnessLightningCallback`` is first used::

    from harness.capture import HarnessLightningCallback
    trainer = L.Trainer(max_steps=300, callbacks=[HarnessLightningCallback("runs/tiny", val_batch=val_ids)])

The LightningModule must hold the Hugging Face model as a sub-module (found automatically: the
first child with ``save_pretrained``, or name it with ``hf_model_attr``). Checkpoints are taken at
``on_before_optimizer_step`` of update N+1 (weights after N updates; Lightning calls it after
unscaling AMP gradients and *before* clipping, so stored train gradients are raw). The loss log
sums ``on_before_backward`` losses (Lightning divides each micro-batch loss by
``accumulate_grad_batches``), i.e. the mean micro-batch loss of each update.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from harness.capture.recorder import Recorder
from harness.capture.schedule import Schedule

logger = logging.getLogger(__name__)


def find_hf_model(module: torch.nn.Module, attr: str | None = None) -> torch.nn.Module:
    """The transformers model inside a LightningModule (``attr`` names it, else the first one found)."""
    if attr:
        return getattr(module, attr)
    if hasattr(module, "save_pretrained"):
        return module
    for child in module.children():
        if hasattr(child, "save_pretrained"):
            return child
    raise ValueError("HarnessLightningCallback: the LightningModule holds no model with save_pretrained "
                     "(pass hf_model_attr='<attribute>')")


class HarnessLightningCallback(pl.Callback):
    """Same arguments as `harness.capture.HarnessCallback`, plus ``hf_model_attr``."""

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
        hf_model_attr: str | None = None,
        tokenizer: Any = None,
    ):
        self.recorder = Recorder(output_dir, val_batch=val_batch, schedule=schedule, modules=modules,
                                 model_id=model_id, size=size, suite=suite, val_losses=val_losses,
                                 optimizer_state=optimizer_state)
        self.hf_model_attr = hf_model_attr
        self.tokenizer = tokenizer
        self._hf: torch.nn.Module | None = None
        self._loss: torch.Tensor | None = None
        self._tokens_step = 0
        self._tokens_seen = 0

    @property
    def schedule(self) -> Schedule:
        """The checkpoint schedule of this capture."""
        return self.recorder.schedule

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the model and write the run manifest and the validation batch."""
        self._hf = find_hf_model(pl_module, self.hf_model_attr)
        self.recorder.start(self._hf, tokenizer=self.tokenizer, meta={"trainer": "lightning"})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Remember the batch's token count for ``tokens_seen``."""
        ids = batch.get("input_ids") if isinstance(batch, dict) else (batch[0] if isinstance(batch, list | tuple) else batch)
        if isinstance(ids, torch.Tensor):
            self._tokens_step += int(ids.numel())

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        """Keep the step's loss for the loss log."""
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Write a scheduled checkpoint before the update, and log the step's loss."""
        assert self._hf is not None
        step = int(trainer.global_step)
        lr = float(optimizer.param_groups[0]["lr"])
        tokens_before = self._tokens_seen
        self._tokens_seen += self._tokens_step * self.recorder.world_size
        self._tokens_step = 0
        if step in self.schedule:
            grads = self.recorder.grads_from_params(self._hf) if self.recorder.is_writer else None
            self.recorder.write_checkpoint(step, self._hf, train_grads=grads, learning_rate=lr,
                                           tokens_seen=tokens_before, optimizer=optimizer)
        loss, self._loss = self._loss, None
        if loss is not None:
            if self.recorder.world_size > 1 and torch.distributed.is_initialized():
                torch.distributed.all_reduce(loss)
                loss = loss / self.recorder.world_size
            self.recorder.log_loss(step + 1, loss, lr, self._tokens_seen)

    def on_train_end(self, trainer, pl_module) -> None:
        """Write the final step (when the schedule asks for it) and flush the loss log."""
        step = int(trainer.global_step)
        if self.schedule.final and step not in self.recorder.written and self._hf is not None:
            opt = trainer.optimizers[0] if trainer.optimizers else None
            self.recorder.write_checkpoint(step, self._hf, train_grads=None, learning_rate=None,
                                           tokens_seen=self._tokens_seen, optimizer=opt, meta={"final": True})
        self.recorder.finish()
