"""A loaded checkpoint of a captured run: the HF model, the stored validation batch, and fields.

Fields (``field(kind, modules)``, globs on tensor names):

* ``weights``: the model's parameters (names as in ``named_parameters``).
* ``delta``: this checkpoint minus the previous *selected* one (``Checkpoint.previous``),
  float32, streamed one tensor pair at a time from the two ``model.safetensors`` files (names as
  in the files; the core's shared `harness.delta.delta_field`).
* ``train_gradients`` / ``val_gradients`` (``gradient`` = ``train_gradients``): the raw
  gradients the callback stored (`harness.learning_dynamics` format), named
  ``layers.<i>.<module>``. The final step stores no train gradients (`NotStoredError`).

``optimizer_state()`` loads ``optimizer.pt`` with ``weights_only=True``; ``stored_val_losses()``
returns the per-token validation losses written at capture time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from harness import learning_dynamics as ld
from harness.api import CheckpointRef, FieldUnavailable
from harness.capture import layout as L
from harness.delta import delta_field, offers_delta
from harness.lm import CausalLMCheckpoint, select_names
from harness.weights import WeightFiles

logger = logging.getLogger(__name__)

GRADIENT_KINDS = ("train_gradients", "val_gradients")


class LocalRunCheckpoint(CausalLMCheckpoint):
    def __init__(self, ref: CheckpointRef, model: torch.nn.Module, *, step_dir: Path,
                 previous_dir: Callable[[CheckpointRef], Path], **kw: Any):
        super().__init__(ref, model, **kw)
        self.step_dir = step_dir
        self._previous_dir = previous_dir
        self._dynamics: ld.StepDynamics | None = None

    @property
    def dynamics(self) -> ld.StepDynamics:
        if self._dynamics is None:
            # gradients were stored as mean-loss gradients of one pass: nothing to rescale
            self._dynamics = ld.StepDynamics(self.step_dir / ld.LD_DIRNAME, step=self.ref.step,
                                             normalise_gradients=False)
        return self._dynamics

    def field_kinds(self) -> tuple[str, ...]:
        kinds = ["weights", "delta"] if offers_delta(self) else ["weights"]
        if self.dynamics.has("train", "gradients"):
            kinds += ["gradient", "train_gradients"]
        if self.dynamics.has("val", "gradients"):
            kinds.append("val_gradients")
        return tuple(kinds)

    def field(self, kind: str, modules: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        if kind == "gradient":
            kind = "train_gradients"
        if kind in GRADIENT_KINDS:
            data = self.dynamics.get(kind.split("_", 1)[0], "gradients")  # raises NotStoredError now
            named = {ld.canonical_name(layer, mod): t for (layer, mod), t in sorted(data.items())}
            return ((n, named[n]) for n in select_names(list(named), modules))
        if kind == "delta":
            return self._delta(modules)
        return super().field(kind, modules)

    def _delta(self, modules: Sequence[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        return delta_field(self, lambda: WeightFiles.open([self.step_dir / "model.safetensors"]),
                           lambda prev: WeightFiles.open([self._previous_dir(prev) / "model.safetensors"]),
                           select=lambda names: select_names(names, modules))

    def optimizer_state(self) -> Mapping[str, Any] | None:
        path = self.step_dir / L.OPTIMIZER
        if not path.is_file():
            return None
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, Mapping) or "state_dict" not in obj:
            raise ValueError(f"{path}: expected {{'optimizer', 'state_dict'}}, found {type(obj).__name__}")
        return obj

    def stored_val_losses(self) -> torch.Tensor:
        """Per-token validation losses (B, S-1) computed by the callback at capture time."""
        from safetensors.torch import load_file

        path = self.step_dir / L.VAL_LOSSES
        if not path.is_file():
            raise FieldUnavailable(f"no stored validation losses at {self.step_dir}")
        return load_file(str(path))["loss"]

    def close(self) -> None:
        self._dynamics = None
        super().close()
