"""harness: a benchmark harness for the training dynamics of language models.

    python -m harness                          # the offline default sweep
    python -m harness model=pythia metric=loss # any family x metrics, configured with Hydra
    harness ls metrics                         # discovered plugins
    harness report results/<run>               # tables from stored records

Importing this package is cheap: no torch, no plugin imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["__version__", "load_results"]


def load_results(paths: Any) -> pd.DataFrame:
    """All finished records under one or more run directories, as one tidy DataFrame."""
    from harness.store import load_results as _load

    return _load(paths)
