"""Field guards: a checkpoint wrapper whose tensor fields refuse NaN and Inf.

The runner hands metrics ``FiniteFields(ckpt)`` instead of ``ckpt`` (unless
``check_finite=false``), so no metric turns a corrupt checkpoint into plausible numbers. The
wrapper is a transparent proxy: every attribute but ``field`` is the wrapped checkpoint's own
(reads and writes), and the wrapped object itself is never modified.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from harness.api import CheckpointRef, HarnessError


class NonFiniteFieldError(HarnessError):
    """A tensor field holds NaN or Inf: the checkpoint (or the family's field code) is broken."""


class FiniteFields:
    """A `harness.api.Checkpoint` whose ``field`` raises `NonFiniteFieldError` on NaN/Inf.

    Generic over families: the check wraps whatever generator the family returns, one tensor
    at a time (no extra copies; one reduction pass per tensor). The runner turns the error
    into an ``error`` record naming the field kind, the tensor and the counts.
    """

    __slots__ = ("wrapped",)

    def __init__(self, checkpoint: Any):
        object.__setattr__(self, "wrapped", checkpoint)

    def field(self, kind: str, modules: Sequence[str] | None = None) -> Iterator[tuple[str, Any]]:
        """The wrapped checkpoint's field ``kind``, each tensor checked before it is yielded."""
        ref = self.wrapped.ref
        for name, tensor in self.wrapped.field(kind, modules):
            check_finite(ref, kind, name, tensor)
            yield name, tensor

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "wrapped"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.wrapped, name, value)

    def __repr__(self) -> str:
        return f"FiniteFields({self.wrapped!r})"


def guard_fields(checkpoint: Any) -> FiniteFields:
    """``checkpoint`` wrapped in `FiniteFields` (kept for callers of the earlier name)."""
    return FiniteFields(checkpoint)


def check_finite(ref: CheckpointRef, kind: str, name: str, tensor: Any) -> None:
    """Raise `NonFiniteFieldError` when a floating (or complex) ``tensor`` holds NaN or Inf."""
    import torch  # NOTE: lazy, `import harness` stays torch-free

    if not torch.is_tensor(tensor):
        import numpy as np

        tensor = torch.from_numpy(np.asarray(tensor))
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return
    if bool(torch.isfinite(tensor).all()):
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int(torch.isinf(tensor).sum())
    raise NonFiniteFieldError(
        f"field '{kind}' tensor '{name}' of {ref.model_id} {ref.label} has {n_nan} NaN and {n_inf} Inf "
        f"of {tensor.numel()} values"
    )
