"""A loaded checkpoint of a captured run: the HF model, the stored validation batch, and fields.

Fields (``field(kind, modules)``, globs on tensor names):

* ``weights``: the model's parameters (names as in ``named_parameters``).
* ``delta``: this checkpoint minus the previous *selected* one (``Checkpoint.previous``),
  float32, streamed one tensor at a time from the two ``model.safetensors`` files (names as in
  the files).
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
from harness.lm import CausalLMCheckpoint, select_names

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
        kinds = ["weights", "delta"] if self.previous is not None else ["weights"]
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
        from safetensors import safe_open

        if self.previous is None:
            raise FieldUnavailable(f"{self.ref.model_id} step {self.ref.step}: first selected checkpoint, no delta")
        cur_path = self.step_dir / "model.safetensors"
        prev_path = self._previous_dir(self.previous) / "model.safetensors"

        def gen() -> Iterator[tuple[str, torch.Tensor]]:
            with safe_open(str(cur_path), framework="pt") as cur, safe_open(str(prev_path), framework="pt") as prev:
                keys = list(cur.keys())
                prev_keys = set(prev.keys())
                for n in select_names(keys, modules):
                    if n not in prev_keys:
                        raise KeyError(f"{prev_path}: no tensor {n!r} (previous checkpoint of another architecture?)")
                    a, b = cur.get_tensor(n), prev.get_tensor(n)
                    if a.shape != b.shape:
                        raise ValueError(f"{n}: shape {tuple(b.shape)} at step {self.previous.step}, "
                                         f"{tuple(a.shape)} at step {self.ref.step}")
                    yield n, a.float() - b.float()

        return gen()

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
