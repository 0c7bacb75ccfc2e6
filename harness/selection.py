"""Checkpoint selection presets and sharding (the ``checkpoints`` config group).

Presets apply per model (training run) to the steps a family offers::

    select: all                      every checkpoint
    select: log_spaced, num: 16      steps nearest to `num` log-spaced points (+ step 0)
    select: every_k, k: 10           every k-th checkpoint in step order (the last always kept)
    select: final                    the last checkpoint only
    select: list, steps: [0, 512]    exactly these steps (missing ones are reported)

``shard: i/n`` then keeps the i-th of n contiguous blocks of the selection, so a sweep of any
width maps onto jobs (``-m checkpoints.shard=0/4,1/4,2/4,3/4``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.api import CheckpointRef, ConfigError, ParameterError, check_choice, check_range

PRESETS = ("all", "log_spaced", "every_k", "final", "list")


def parse_shard(shard: Any) -> tuple[int, int] | None:
    """``"i/n"`` (or ``[i, n]``) -> (i, n) with 0 <= i < n; None for no sharding."""
    if shard in (None, "", "none", "null"):
        return None
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ParameterError("checkpoints.shard", shard, "'i/n' with 0 <= i < n") from None
    if n < 1 or not 0 <= i < n:
        raise ParameterError("checkpoints.shard", shard, "'i/n' with 0 <= i < n")
    return i, n


def validate(cfg: Mapping[str, Any]) -> None:
    """Fail early on a bad selection config (before any checkpoint is listed)."""
    preset = cfg.get("select", "all")
    check_choice("checkpoints.select", preset, PRESETS)
    if preset == "log_spaced":
        check_range("checkpoints.num", cfg.get("num", 16), 1)
    if preset == "every_k":
        check_range("checkpoints.k", cfg.get("k", 1), 1)
    if preset == "list" and not cfg.get("steps"):
        raise ParameterError("checkpoints.steps", cfg.get("steps"), "a non-empty list of steps")
    parse_shard(cfg.get("shard"))


def _log_spaced(steps: Sequence[int], num: int, include_zero: bool) -> list[int]:
    positive = [s for s in steps if s > 0]
    chosen = set()
    if include_zero and 0 in steps:
        chosen.add(0)
    if positive:
        lo, hi = math.log(positive[0]), math.log(positive[-1])
        for j in range(num):
            target = lo + (hi - lo) * (j / (num - 1) if num > 1 else 1.0)
            chosen.add(min(positive, key=lambda s: (abs(math.log(s) - target), s)))
    return sorted(chosen)


def _select_steps(steps: list[int], cfg: Mapping[str, Any]) -> list[int]:
    preset = cfg.get("select", "all")
    if preset == "all":
        out = steps
    elif preset == "final":
        out = steps[-1:]
    elif preset == "every_k":
        k = int(cfg.get("k", 1))
        out = sorted(set(steps[::k]) | set(steps[-1:]))
    elif preset == "log_spaced":
        out = _log_spaced(steps, int(cfg.get("num", 16)), bool(cfg.get("include_zero", True)))
    else:  # list
        wanted = {int(s) for s in cfg.get("steps") or []}
        out = [s for s in steps if s in wanted]
    lo, hi = cfg.get("min_step"), cfg.get("max_step")
    return [s for s in out if (lo is None or s >= lo) and (hi is None or s <= hi)]


def select(refs: Iterable[CheckpointRef], cfg: Mapping[str, Any]) -> list[CheckpointRef]:
    """The selected refs, ordered by (model_id, step), then sharded."""
    validate(cfg)
    by_model: dict[str, dict[int, CheckpointRef]] = {}
    for ref in refs:
        by_model.setdefault(ref.model_id, {})[ref.step] = ref
    chosen: list[CheckpointRef] = []
    for model_id in sorted(by_model):
        steps = sorted(by_model[model_id])
        chosen += [by_model[model_id][s] for s in _select_steps(steps, cfg)]
    if cfg.get("select") == "list" and not chosen:
        raise ConfigError(f"none of the requested steps {list(cfg.get('steps'))} exists")
    shard = parse_shard(cfg.get("shard"))
    if shard:
        i, n = shard
        size = math.ceil(len(chosen) / n) if chosen else 0
        chosen = chosen[i * size : (i + 1) * size]
    return chosen


def missing_steps(refs: Sequence[CheckpointRef], cfg: Mapping[str, Any]) -> list[int]:
    """Steps an explicit list asked for that the family does not offer."""
    if cfg.get("select") != "list":
        return []
    have = {r.step for r in refs}
    return sorted({int(s) for s in cfg.get("steps") or []} - have)
