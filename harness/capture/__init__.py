"""Capture learning dynamics from any training run (transformers ``Trainer`` or Lightning).

Light on purpose: importing ``harness.capture`` loads no torch. The callbacks live in
submodules and are resolved on first use::

    from harness.capture import HarnessCallback, Schedule          # transformers Trainer
    from harness.capture import HarnessLightningCallback           # Lightning (optional extra)

    cb = HarnessCallback("runs/tiny", val_batch=val_ids, schedule=Schedule(every=50, log_until=32))

What a run directory holds: `harness.capture.layout`. The writer every integration shares:
`harness.capture.recorder.Recorder`. The reader: the ``local_run`` model family.
"""

from __future__ import annotations

from typing import Any

from harness.capture.schedule import Schedule, presets

__all__ = ["HarnessCallback", "HarnessLightningCallback", "Recorder", "Schedule", "presets"]

_LAZY = {
    "HarnessCallback": "harness.capture.hf",
    "HarnessLightningCallback": "harness.capture.lightning_callback",
    "Recorder": "harness.capture.recorder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness.capture' has no attribute {name!r}")
