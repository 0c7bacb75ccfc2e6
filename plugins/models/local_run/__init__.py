"""The ``local_run`` family: runs captured with `harness.capture` (Trainer/Lightning callbacks)."""

from harness_plugins.models.local_run.family import LocalRunFamily

__all__ = ["LocalRunFamily"]
