"""The on-disk layout of a captured run and suite (no torch: the family lists runs cheaply).

A run directory is a pico-train run directory plus a few files of our own, so the same
learning-dynamics reader (`harness.learning_dynamics`) serves both::

    <run>/capture.json                 run manifest: model_id, size, n_params, modules, schedule,
                                       validation-batch fingerprint, format version
    <run>/val_batch.safetensors        the fixed validation batch ({"input_ids": (B, S)})
    <run>/loss_log.jsonl               one line per optimizer step: step, loss, learning_rate, tokens_seen
    <run>/checkpoints/step_<N>/        config.json, model.safetensors (fp32), tokenizer files,
                                       step.json (written last: step, tokens_seen, learning_rate, ...),
                                       learning_dynamics/{train,val}_gradients.pt,
                                       val_losses.safetensors (optional), optimizer.pt (optional)

Atomicity: a checkpoint is written into ``checkpoints/.partial-step_<N>-<pid>/`` and renamed
to ``step_<N>`` only when complete. A crash leaves the partial directory, which `partial_steps`
reports and `complete_steps` ignores (its name is not ``step_<N>``; a ``step_<N>`` without
``step.json`` is ignored too).

A suite is a directory of runs of several sizes trained on the same data order::

    <suite>/suite.json                 {"format": "harness.capture.suite", "runs": [{"model_id", "size", "path"}]}
    <suite>/<size>/...                 one run directory per size
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.api import HarnessError
from harness.atomic import atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
RUN_MANIFEST = "capture.json"
SUITE_MANIFEST = "suite.json"
LOSS_LOG = "loss_log.jsonl"
VAL_BATCH = "val_batch.safetensors"
STEP_META = "step.json"
VAL_LOSSES = "val_losses.safetensors"
OPTIMIZER = "optimizer.pt"
PARTIAL_PREFIX = ".partial-step_"

_STEP_DIR = re.compile(r"^step_(\d+)$")
_PARTIAL = re.compile(r"^\.partial-step_(\d+)-")


class CaptureFormatError(HarnessError):
    """A captured run or suite directory is missing or malformed."""


def step_dir(run: str | os.PathLike[str], step: int) -> Path:
    """The directory of one checkpoint of a captured run."""
    return Path(run) / "checkpoints" / f"step_{int(step)}"


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON to a temporary file in the same directory, then rename over ``path``."""
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON object, raising `CaptureFormatError` naming the file when it is missing or unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CaptureFormatError(f"missing file: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CaptureFormatError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CaptureFormatError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def is_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a captured run (it has a run manifest)."""
    return (Path(path) / RUN_MANIFEST).is_file()


def complete_steps(run: str | os.PathLike[str]) -> list[int]:
    """Steps whose checkpoint directory is complete (renamed into place, ``step.json`` present)."""
    ckpts = Path(run) / "checkpoints"
    if not ckpts.is_dir():
        return []
    out = []
    for p in ckpts.iterdir():
        m = _STEP_DIR.match(p.name)
        if not m or not p.is_dir():
            continue
        if not (p / STEP_META).is_file():
            logger.warning("%s: no %s (incomplete checkpoint), ignored", p, STEP_META)
            continue
        out.append(int(m.group(1)))
    return sorted(out)


def partial_steps(run: str | os.PathLike[str]) -> list[int]:
    """Steps with a partial (crashed) checkpoint write left behind."""
    ckpts = Path(run) / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpts.iterdir() if (m := _PARTIAL.match(p.name)))


def read_suite(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The runs under ``root``: itself when it is a run, else the suite manifest's runs, else
    every sub-directory that is a run. Each entry: ``model_id``, ``size``, ``path``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CaptureFormatError(f"captured run directory not found: {root}")
    if is_run(root):
        man = read_json(root / RUN_MANIFEST)
        return [{"model_id": man.get("model_id") or root.name, "size": man.get("size") or root.name, "path": root}]
    runs: list[dict[str, Any]] = []
    if (root / SUITE_MANIFEST).is_file():
        man = read_json(root / SUITE_MANIFEST)
        for entry in man.get("runs", []):
            path = root / entry["path"]
            if not is_run(path):
                logger.warning("%s lists %s, which has no %s yet; skipped", root / SUITE_MANIFEST, path, RUN_MANIFEST)
                continue
            runs.append({"model_id": entry["model_id"], "size": entry["size"], "path": path})
    else:
        for p in sorted(root.iterdir()):
            if p.is_dir() and is_run(p):
                man = read_json(p / RUN_MANIFEST)
                runs.append({"model_id": man.get("model_id") or p.name, "size": man.get("size") or p.name, "path": p})
    if not runs:
        raise CaptureFormatError(f"{root}: neither a captured run ({RUN_MANIFEST}) nor a suite of runs")
    return runs


def register_in_suite(suite: str | os.PathLike[str], run: str | os.PathLike[str], model_id: str, size: str,
                      meta: Mapping[str, Any] | None = None) -> None:
    """Add (or update) one run in ``<suite>/suite.json`` (read, modify, atomic replace).

    NOTE: sizes trained concurrently by separate processes may race on this file; the reader
    falls back to scanning sub-directories, so a lost entry is still found.
    """
    suite = Path(suite)
    path = suite / SUITE_MANIFEST
    man = read_json(path) if path.is_file() else {"format": "harness.capture.suite", "version": FORMAT_VERSION,
                                                   "runs": []}
    rel = os.path.relpath(Path(run), suite)
    runs = [r for r in man.get("runs", []) if r.get("model_id") != model_id]
    runs.append({"model_id": model_id, "size": str(size), "path": rel, **dict(meta or {})})
    man["runs"] = sorted(runs, key=lambda r: r["model_id"])
    write_json_atomic(path, man)


def read_loss_log(run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-step training-loss log; a torn last line (crash mid-write) is skipped."""
    path = Path(run) / LOSS_LOG
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                logger.warning("%s: torn last line skipped", path)
                continue
            raise CaptureFormatError(f"{path}:{i + 1}: not JSON") from None
    # a resumed run logs steps again: the last value of a step wins
    by_step = {int(r["step"]): r for r in rows}
    return [by_step[s] for s in sorted(by_step)]
