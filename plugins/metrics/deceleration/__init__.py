"""The ``deceleration`` metric: loss deceleration (t_d, L_d, r_d) from a broken-neural-scaling-law
fit of a run's loss curve (Mircea et al. 2025; Caballero et al. 2022).

    python -m harness model=loss_log model.path=train_loss.csv metric=deceleration

`bnsl` is the general n-break fitter (modes ``zsl`` and ``caballero``), usable on its own.
"""

from __future__ import annotations

from .metric import DecelerationMetric

__all__ = ["DecelerationMetric"]
