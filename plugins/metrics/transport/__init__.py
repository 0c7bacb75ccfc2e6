"""The ``transport`` metric: TDU-OFC finite-size gradient-transport observables.

    python -m harness model=pico metric=transport

See `harness_plugins.metrics.transport.metric` and docs/transport.md.
"""

from __future__ import annotations

from .metric import TransportMetric

__all__ = ["TransportMetric"]
