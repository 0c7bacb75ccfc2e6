"""loss: held-out loss of a checkpoint on its family's evaluation data (generic)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from harness.api import CheckpointContext, Measurement, Metric, Scope, check_range


class LossMetric(Metric):
    """Held-out loss (mean per-example or per-token) with its standard error, and the logit scale."""

    name = "loss"
    version = "1"
    scopes = (Scope.CHECKPOINT,)
    performance = {"loss": "loss", "perplexity": "loss"}

    def __init__(self, split: str = "val", max_batches: int | None = None):
        super().__init__(split=split, max_batches=max_batches)
        if max_batches is not None:
            check_range("max_batches", max_batches, 1)
        self.split, self.max_batches = split, max_batches

    def measure(self, ctx: CheckpointContext) -> Iterator[Measurement]:
        import torch

        ckpt = ctx.checkpoint
        batches = ckpt.eval_batches(self.split)[: self.max_batches]
        total, total_sq, count = 0.0, 0.0, 0
        logit_std_sum, logit_rows = 0.0, 0
        has_logits = True
        with torch.no_grad():
            for batch in batches:
                losses = ckpt.per_example_loss(batch).double().flatten()
                total += float(losses.sum())
                total_sq += float((losses**2).sum())
                count += losses.numel()
                if has_logits:
                    try:
                        logits = ckpt.logits(batch).double()
                    except NotImplementedError:
                        has_logits = False
                        continue
                    std = logits.std(dim=-1).flatten()
                    logit_std_sum += float(std.sum())
                    logit_rows += std.numel()
        if count == 0:
            yield Measurement.skipped("loss", f"no evaluation examples in split {self.split!r}")
            return
        mean = total / count
        var = max(total_sq / count - mean**2, 0.0)
        stderr = math.sqrt(var / max(count - 1, 1))
        extra: dict[str, Any] = {"split": self.split, "batches": len(batches)}
        yield Measurement("loss", mean, stderr=stderr, n=count, higher_is_better=False, unit="nats", extra=extra)
        if logit_rows:
            yield Measurement("logit_std", logit_std_sum / logit_rows, n=logit_rows, extra=extra)
        for task, ppl in sorted(ckpt.performance().items()):
            yield Measurement("perplexity", float(ppl), task=task, higher_is_better=False,
                              extra={"source": "stored with the checkpoint by its family"})
