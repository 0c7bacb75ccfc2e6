"""loss: held-out loss of a checkpoint on its family's evaluation data (generic)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from harness.api import CheckpointContext, Measurement, Metric
from harness.params import Params, param


class LossMetric(Metric):
    """Held-out loss (mean per-example or per-token) with its standard error, and the logit scale."""

    name = "loss"
    version = "1"
    performance = {"loss": "loss", "perplexity": "loss"}

    class Params(Params):
        split: str = param("val", "which evaluation split of the family")
        max_batches: int | None = param(None, "cap the number of evaluation batches (null = all)", ge=1)

    def measure_checkpoint(self, ctx: CheckpointContext) -> Iterator[Measurement]:
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
                    except NotImplementedError:  # FieldUnavailable included
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
