"""The ``loss_log`` model family: training-loss logs (CSV, JSONL, TensorBoard) with no
checkpoints, for trajectory metrics.

    python -m harness model=loss_log model.path=train_loss.csv 'metric=[deceleration,time_scaling]'
"""

from __future__ import annotations

from .family import LossLogFamily, NoWeightsError

__all__ = ["LossLogFamily", "NoWeightsError"]
