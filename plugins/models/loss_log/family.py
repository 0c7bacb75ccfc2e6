"""The ``loss_log`` family: training-loss logs without any checkpoint.

Many users have only a loss log. This family reads one or several (CSV, JSON lines or
TensorBoard) and offers each as a training run, so trajectory-scope metrics (``deceleration``,
``time_scaling``) fit the curve::

    python -m harness model=loss_log model.path=train_loss.csv 'metric=[deceleration,time_scaling]'
    python -m harness model=loss_log 'model.path=[runs/70m.csv,runs/160m.csv]' metric=deceleration

Each file is one run (model_id) and one size: the label is the file stem (a TensorBoard
directory's name) unless ``sizes`` names them. The runner calls trajectory metrics once per
model_id found among the checkpoint refs, so the family lists exactly ONE ref per file, at
the last logged step (with the tokens seen and learning rate logged there); ``history()``
returns the whole log. There are no weights: `load` raises `NoWeightsError`, which the
runner turns into ``error`` records for checkpoint/pair-scope metrics.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from harness.api import Checkpoint, CheckpointRef, HarnessError, ModelFamily, ParameterError
from harness.params import Params, param

from .readers import FORMATS, describe_file, detect_format, normalise_log, read_log

logger = logging.getLogger(__name__)


class NoWeightsError(HarnessError):
    """A loss log has no model to load."""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)


def _non_empty(value: Any) -> Any:
    if not value:
        raise ValueError("empty")
    return value


class LossLogFamily(ModelFamily):
    """Training-loss logs (CSV, JSONL, TensorBoard) as runs without checkpoints."""

    name = "loss_log"
    has_weights = False

    class Params(Params):
        path: Any = param(None, "required: a file, a TensorBoard log dir, a glob, or a list of them",
                          allowed="a CSV/JSONL file, a TensorBoard event file or directory, a glob, or a list of them")
        format: str = param("auto", "auto (from the suffix: .csv/.tsv, .jsonl/.json, tfevents or a dir) | csv | "
                            "jsonl | tensorboard", choices=FORMATS)
        sizes: list[str] | None = param(None, "one label per file (model_id and size); null = the file stem "
                                        "(TensorBoard: the dir name)")
        step_key: str | None = param("step", "step column; null = row order (1, 2, ...); TensorBoard uses the "
                                     "event step")
        loss_key: str = param("loss", "loss column or TensorBoard tag (e.g. train/loss)", convert=_non_empty,
                              allowed="the loss column name or TensorBoard tag")
        lr_key: str | None = param("learning_rate", "learning-rate column/tag, used when present")
        tokens_key: str | None = param("tokens_seen", "tokens-seen column/tag, used when present")
        tokens_per_step: float | None = param(None, "when the log has no tokens column: tokens_seen = step * "
                                              "tokens_per_step", gt=0)
        n_params: list[int] | None = param(None, "model size(s) in parameters, one or one per file (provenance, "
                                           "size plots)", ge=1)

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        path, format, sizes, n_params = self.path, self.format, self.sizes, self.n_params  # noqa: A001
        step_key, loss_key, lr_key, tokens_key = self.step_key, self.loss_key, self.lr_key, self.tokens_key
        tokens_per_step = self.tokens_per_step
        files = self._expand(path)
        formats = []
        for f in files:
            fmt = format if format != "auto" else detect_format(f)
            if fmt is None:
                raise ParameterError("format", format, f"csv, jsonl or tensorboard ({f.name} has an unknown suffix)")
            formats.append(fmt)
        labels = [str(s) for s in _as_list(sizes)] or [self._label(f) for f in files]
        if len(labels) != len(files):
            raise ParameterError("sizes", sizes, f"null or one label per file ({len(files)} files)")
        if len(set(labels)) != len(labels):
            raise ParameterError("sizes", sizes, f"distinct labels, one per file (file stems collide: {labels})")
        counts = _as_list(n_params)
        if counts and len(counts) == 1 and len(files) > 1:
            counts = counts * len(files)
        if counts and len(counts) != len(files):
            raise ParameterError("n_params", n_params, f"null, one integer, or one per file ({len(files)} files)")
        self.files, self.formats, self.labels = files, formats, labels
        self.n_params = [int(c) for c in counts] or [None] * len(files)
        self.keys = {"step_key": step_key, "loss_key": loss_key, "lr_key": lr_key, "tokens_key": tokens_key,
                     "tokens_per_step": tokens_per_step}
        self._logs: dict[str, pd.DataFrame] = {}

    @staticmethod
    def _expand(path: Any) -> list[Path]:
        """Files from one path, a list, or glob patterns; each must exist."""
        allowed = "a CSV/JSONL file, a TensorBoard event file or directory, a glob, or a list of them"
        out: list[Path] = []
        for p in _as_list(path):
            p = os.path.expanduser(str(p))
            matches = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
            if not matches:
                raise ParameterError("path", p, f"{allowed} (the pattern matches nothing)")
            for m in matches:
                if not Path(m).exists():
                    raise ParameterError("path", m, f"{allowed} (no such file)")
                out.append(Path(m).resolve())
        if not out:
            raise ParameterError("path", path, allowed)
        return out

    @staticmethod
    def _label(path: Path) -> str:
        if path.is_dir():
            return path.name
        if "tfevents" in path.name:
            return path.parent.name
        return path.stem

    # -- the logs ------------------------------------------------------------------------------
    def log(self, model_id: str) -> pd.DataFrame:
        """The normalised log of one run (read once, then cached)."""
        if model_id not in self._logs:
            i = self.labels.index(model_id)
            raw = read_log(self.files[i], self.formats[i])
            self._logs[model_id] = normalise_log(raw, where=str(self.files[i]), **self.keys)
            logger.info("loss_log %s: %d steps from %s", model_id, len(self._logs[model_id]), self.files[i])
        return self._logs[model_id]

    def checkpoints(self) -> list[CheckpointRef]:
        """One ref per file, at the last logged step (see the module docstring)."""
        refs = []
        for i, label in enumerate(self.labels):
            log = self.log(label)
            last = log.iloc[-1]
            tokens = last.get("tokens_seen") if "tokens_seen" in log.columns else None
            lr = last.get("learning_rate") if "learning_rate" in log.columns else None
            refs.append(CheckpointRef(
                family=self.name, model_id=label, size=label, step=int(last["step"]),
                tokens_seen=None if tokens is None or pd.isna(tokens) else int(tokens),
                learning_rate=None if lr is None or pd.isna(lr) else float(lr),
                n_params=self.n_params[i],
                meta={"path": str(self.files[i]), "format": self.formats[i], "n_rows": len(log)},
            ))
        return refs

    def load(self, ref: CheckpointRef) -> Checkpoint:
        raise NoWeightsError(
            f"loss_log has no weights: {ref.model_id!r} is a training-loss log "
            f"({ref.meta.get('path', '?')}); checkpoint- and pair-scope metrics cannot run on it, "
            "use trajectory metrics such as deceleration or time_scaling"
        )

    def history(self, model_id: str) -> pd.DataFrame | None:
        if model_id not in self.labels:
            return None
        return self.log(model_id).copy()

    def describe(self) -> dict[str, Any]:
        return {
            "files": [{**describe_file(f), "label": lab, "format": fmt}
                      for f, lab, fmt in zip(self.files, self.labels, self.formats)],
            **self.keys,
        }
