"""The ``interference`` metric plugin: loss-change interference and gradient opposition.

``python -m harness model=<family> metric=interference``; see docs/interference.md.
"""

from __future__ import annotations

from .metric import InterferenceMetric

__all__ = ["InterferenceMetric"]
