"""Readers of training-loss logs: CSV/TSV, JSON lines (or a JSON array), TensorBoard events.

Each reader returns the raw table (one column per logged quantity, TensorBoard tags as
columns, plus ``step`` for TensorBoard); `normalise_log` turns it into the harness's history
schema: ``step``, ``loss`` and when known ``learning_rate`` and ``tokens_seen``.

Example::

    raw = read_log(Path("train.csv"), "csv")
    hist = normalise_log(raw, step_key="step", loss_key="train/loss", lr_key="lr", tokens_key=None)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.api import ConfigError
from harness.curves import clean_series, describe_drops

logger = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "jsonl", "tensorboard")
_SUFFIX = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def detect_format(path: Path) -> str | None:
    """``csv`` | ``jsonl`` | ``tensorboard`` from the name (a directory is a TensorBoard log
    dir), or None when the name says nothing."""
    if path.is_dir() or "tfevents" in path.name:
        return "tensorboard"
    return _SUFFIX.get(path.suffix.lower())


def read_log(path: Path, fmt: str) -> pd.DataFrame:
    """The raw table of one log file (or TensorBoard directory)."""
    try:
        if fmt == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else None  # None: sniffed (',', ';', ...)
            return pd.read_csv(path, sep=sep, engine="python")
        if fmt == "jsonl":
            return _read_json(path)
        if fmt == "tensorboard":
            return _read_tensorboard(path)
    except ConfigError:
        raise
    except Exception as exc:  # unreadable input is a user-facing problem with the file
        raise ConfigError(f"cannot read the {fmt} loss log {path}: {type(exc).__name__}: {exc}") from exc
    raise ConfigError(f"unknown loss-log format {fmt!r} for {path}")


def _read_json(path: Path) -> pd.DataFrame:
    text = path.read_text()
    if text.lstrip().startswith("["):  # a JSON array of records
        return pd.read_json(path, orient="records")
    return pd.read_json(path, lines=True)


def _read_tensorboard(path: Path) -> pd.DataFrame:
    """Scalars of an event file or a log directory, one column per tag, indexed by step.

    NOTE: imported lazily: tbparse (and tensorboard) are only needed for TensorBoard logs.
    Several event files of one directory (a resumed run) merge; the last value at a step wins.
    """
    try:
        from tbparse import SummaryReader
    except ImportError as exc:
        raise ConfigError(
            "reading TensorBoard event files needs the packages tbparse and tensorboard "
            "(pip install tbparse tensorboard), or export the log as CSV/JSONL"
        ) from exc
    scalars = SummaryReader(str(path), pivot=False).scalars
    if scalars is None or len(scalars) == 0:
        raise ConfigError(f"no scalar events in the TensorBoard log {path}")
    wide = scalars.pivot_table(index="step", columns="tag", values="value", aggfunc="last")
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index()


def normalise_log(raw: pd.DataFrame, *, step_key: str | None, loss_key: str, lr_key: str | None,
                  tokens_key: str | None, tokens_per_step: float | None, where: str) -> pd.DataFrame:
    """The history schema from a raw table: numeric ``step`` (row order 1..n when
    ``step_key`` is None), ``loss``, optional ``learning_rate``/``tokens_seen``; sorted by
    step; a step logged twice (a resumed run) keeps its last row; rows without a numeric step
    or a finite loss dropped. What was dropped is counted (`harness.curves.clean_series`) in
    ``attrs["dropped"]``, logged, and reported by the trajectory metrics in their records.
    Zero and negative losses are kept here: the metrics that need a positive loss count them."""
    cols = list(raw.columns)

    def need(key: str, what: str) -> pd.Series:
        if key not in raw.columns:
            raise ConfigError(f"{where}: no {what} column/tag {key!r} (found: {cols}); set model.{_param(what)}")
        return pd.to_numeric(raw[key], errors="coerce")

    out = pd.DataFrame({
        "step": np.arange(1, len(raw) + 1) if step_key is None else need(step_key, "step"),
        "loss": need(loss_key, "loss"),
    })
    if lr_key and lr_key in raw.columns:
        out["learning_rate"] = pd.to_numeric(raw[lr_key], errors="coerce")
    if tokens_key and tokens_key in raw.columns:
        out["tokens_seen"] = pd.to_numeric(raw[tokens_key], errors="coerce")
    elif tokens_per_step is not None:
        out["tokens_seen"] = out["step"] * tokens_per_step
    n = len(out)
    extra = tuple(c for c in ("learning_rate", "tokens_seen") if c in out.columns)
    out, dropped = clean_series(out, "loss", positive=False, extra=extra)
    text = describe_drops(dropped, n)
    if text:
        logger.warning("%s: %s", where, text)
    if len(out) == 0:
        raise ConfigError(f"{where}: no rows with a numeric {step_key or 'row'} and a finite {loss_key!r}"
                          + (f" ({text})" if text else ""))
    out["step"] = out["step"].astype("int64")
    out.attrs["dropped"] = {k: v for k, v in dropped.items() if v}
    out.attrs["n_rows"] = n
    return out


def _param(what: str) -> str:
    return {"step": "step_key", "loss": "loss_key"}.get(what, what)


def describe_file(path: Path) -> dict[str, Any]:
    """Size and modification time (provenance without reading big logs twice)."""
    st = path.stat()
    return {"path": str(path), "bytes": st.st_size, "mtime": st.st_mtime}
