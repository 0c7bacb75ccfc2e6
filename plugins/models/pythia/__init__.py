"""Pythia: EleutherAI's GPT-NeoX suite (Hub revisions ``stepN``), local mirrors in the Hub's
layout, and the locally built ``pythia_mini`` suite (``python -m harness.build suite=pythia_mini``).

    python -m harness model=pythia model.size=160m checkpoints=log_spaced metric=loss

See docs/pythia.md. Importing this package is cheap (no torch until a checkpoint is loaded).
"""

from __future__ import annotations

from .family import PythiaFamily

__all__ = ["PythiaFamily"]
