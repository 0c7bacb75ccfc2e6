"""A loaded Pico checkpoint: the native model plus Pico's stored learning dynamics as fields.

Fields (``field(kind, modules)``, names are prefix-free ``layers.<i>.<module>`` for the stored
dynamics and the model's parameter names for ``weights``/``delta``):

* ``{train,val}_{gradients,weights,activations}``: the files pico-train stored at this step,
  float32, gradients divided by the number of extraction sub-batches (mean-loss gradient; see
  `harness.learning_dynamics`). Each file is read once and shared by every metric.
* ``gradient``: the generic kind, = ``train_gradients``.
* ``weights``: the model's parameters; ``delta``: current minus previous selected checkpoint,
  streamed one tensor pair at a time from the two ``model.safetensors`` files (the core's shared
  `harness.delta.delta_field`; listed only when there is a previous checkpoint).

A step that stored no ``train`` dynamics (pico-train's last step) raises `NotStoredError`
("... not stored at step N") for train kinds, so a metric can skip with that reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from harness import learning_dynamics as ld
from harness.api import CheckpointRef
from harness.delta import delta_field, offers_delta
from harness.lm import CausalLMCheckpoint, select_names
from harness.weights import WeightFiles

logger = logging.getLogger(__name__)

LD_KINDS = tuple(f"{s}_{k}" for s in ld.SPLITS for k in ld.KINDS)


class PicoCheckpoint(CausalLMCheckpoint):
    def __init__(
        self,
        ref: CheckpointRef,
        model: torch.nn.Module,
        *,
        dynamics: Callable[[], ld.StepDynamics],
        performance: Callable[[], dict[str, float]],
        previous_weights: Callable[[CheckpointRef], Path],
        weights_file: Path | None = None,
        **kw: Any,
    ):
        super().__init__(ref, model, **kw)
        self._dynamics_factory = dynamics
        self._dynamics: ld.StepDynamics | None = None
        self._performance = performance
        self._previous_weights = previous_weights
        self._weights_file = weights_file
        self.previous: CheckpointRef | None = None  # set by the runner

    @property
    def dynamics(self) -> ld.StepDynamics:
        """This step's learning dynamics (files read lazily, once)."""
        if self._dynamics is None:
            self._dynamics = self._dynamics_factory()
        return self._dynamics

    def performance(self) -> dict[str, float]:
        """Pico's own evaluation at this step: ``{task: perplexity}`` (pico-train's
        ``eval_results/step_<N>.json``, e.g. ``{"paloma": 22.98}``)."""
        return self._performance()

    def field_kinds(self) -> tuple[str, ...]:
        """weights; delta when there is a previous selected checkpoint; the stored dynamics of this step."""
        kinds = ["weights", "delta"] if offers_delta(self) else ["weights"]
        if self.dynamics.has("train", "gradients"):
            kinds.append("gradient")
        kinds += [k for k in LD_KINDS if self.dynamics.has(*k.split("_", 1))]
        return tuple(kinds)

    def field(self, kind: str, modules: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        if kind == "gradient":
            kind = "train_gradients"
        if kind in LD_KINDS:
            split, what = kind.split("_", 1)
            data = self.dynamics.get(split, what)  # raises NotStoredError / LearningDynamicsError now
            named = {ld.canonical_name(layer, mod): t for (layer, mod), t in sorted(data.items())}
            return ((n, named[n]) for n in select_names(list(named), modules))
        if kind == "delta":
            return self._delta(modules)
        return super().field(kind, modules)

    def _delta(self, modules: Sequence[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        if self._weights_file is None:
            raise RuntimeError(f"{self.ref.model_id} step {self.ref.step}: checkpoint built without its weights file")
        params = set(dict(self.model.named_parameters()))  # the file's non-parameter entries stay out
        return delta_field(self, lambda: WeightFiles.open([self._weights_file]),
                           lambda prev: WeightFiles.open([self._previous_weights(prev)]),
                           select=lambda names: select_names([n for n in names if n in params], modules))

    def close(self) -> None:
        if self._dynamics is not None:
            self._dynamics.clear()
        self._dynamics = None
        super().close()
