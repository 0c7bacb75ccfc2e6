"""lm_eval metric plugin: downstream scores with EleutherAI's lm-evaluation-harness.

See `harness_plugins.metrics.lm_eval.metric` and docs/lm_eval.md.
"""

from __future__ import annotations

from harness_plugins.metrics.lm_eval.metric import LmEvalMetric

__all__ = ["LmEvalMetric"]
