"""The one ``delta`` field: this checkpoint's weights minus the previous *selected* checkpoint's,
streamed tensor pair by tensor pair over the family's weight reader (`harness.weights`).

Every family offers ``delta`` through `delta_field`, so the semantics are the same everywhere:

* the previous checkpoint is ``checkpoint.previous`` (set by the runner before any metric runs);
  the first selected checkpoint of a run has none and `delta_field` raises `FieldUnavailable`
  (a ``skipped`` record with that reason, for every family alike), and `offers_delta` is False
  so ``field_kinds()`` does not list it;
* values are float32 ``current - previous``, computed by `stream_deltas` with peak memory about
  one tensor; a tensor missing on one side or of another shape is a `CheckpointFileError`
  naming both files (an ``error`` record);
* `delta_meta` gives ``from_step``, ``to_step`` and ``step_gap`` for ``field_meta("delta")``.

A family supplies only its readers, e.g.::

    def field(self, kind, modules=None):
        if kind == "delta":
            return delta_field(self, lambda: WeightFiles.open([self.file]),
                               lambda prev: WeightFiles.open([file_of(prev)]), modules)

Imports torch: plugins import this module, never ``import harness``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from harness.api import Checkpoint, CheckpointRef, FieldUnavailable
from harness.weights import WeightFiles, stream_deltas

#: a family's reader for one checkpoint (built lazily: opening reads the header only)
Reader = WeightFiles | Callable[[], WeightFiles]


def offers_delta(checkpoint: Checkpoint) -> bool:
    """Whether ``delta`` will yield for this checkpoint (it has a previous selected checkpoint)."""
    return checkpoint.previous is not None


def delta_meta(checkpoint: Checkpoint) -> dict[str, Any]:
    """``{"from_step", "to_step", "step_gap"}`` of the delta (empty without a previous checkpoint)."""
    prev = checkpoint.previous
    if prev is None:
        return {}
    return {"from_step": prev.step, "to_step": checkpoint.ref.step, "step_gap": checkpoint.ref.step - prev.step}


def no_previous_message(checkpoint: Checkpoint) -> str:
    """The reason a checkpoint without a previous one has no delta (one wording for all families)."""
    return f"{checkpoint.ref.model_id}@{checkpoint.ref.label} is the first selected checkpoint of its run: no delta"


def delta_field(
    checkpoint: Checkpoint,
    current: Reader,
    previous: Callable[[CheckpointRef], WeightFiles],
    names: Sequence[str] | None = None,
    *,
    select: Callable[[list[str]], Sequence[str]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, current - previous)`` for the selected tensors, one pair at a time.

    ``current`` is this checkpoint's reader (or a function building it), ``previous`` builds the
    reader of a given `CheckpointRef`; ``names`` lists the tensors (None: ``select`` applied to
    the current reader's names, or all of them). Raises `FieldUnavailable` at once when the
    checkpoint has no previous one; opening both readers also happens at once, so a missing or
    corrupt file fails the call, not the first iteration.
    """
    if checkpoint.previous is None:
        raise FieldUnavailable(no_previous_message(checkpoint))
    cur = current() if callable(current) else current
    prev = previous(checkpoint.previous)
    if names is None:
        names = list(select(cur.names())) if select is not None else cur.names()
    return stream_deltas(cur, prev, list(names), dtype)
