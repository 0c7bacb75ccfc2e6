"""A loaded Pico checkpoint: the native model plus Pico's stored learning dynamics as fields.

Fields (``field(kind, modules)``, names are prefix-free ``layers.<i>.<module>`` for the stored
dynamics and the model's parameter names for ``weights``/``delta``):

* ``{train,val}_{gradients,weights,activations}``: the files pico-train stored at this step,
  float32, gradients divided by the number of extraction sub-batches (mean-loss gradient; see
  `harness.learning_dynamics`). Each file is read once and shared by every metric.
* ``gradient``: the generic kind, = ``train_gradients``.
* ``weights``: the model's parameters; ``delta``: current minus previous selected checkpoint,
  streamed one tensor at a time from the previous ``model.safetensors``.

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
from harness.api import CheckpointRef, FieldUnavailable
from harness.lm import CausalLMCheckpoint, select_names

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
        **kw: Any,
    ):
        super().__init__(ref, model, **kw)
        self._dynamics_factory = dynamics
        self._dynamics: ld.StepDynamics | None = None
        self._performance = performance
        self._previous_weights = previous_weights
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
        kinds = ["weights", "delta"] if self.previous is not None else ["weights"]
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
        from safetensors import safe_open

        if self.previous is None:
            raise FieldUnavailable(f"{self.ref.model_id} step {self.ref.step}: no previous selected checkpoint "
                                   "for 'delta'")
        path = self._previous_weights(self.previous)
        params = dict(self.model.named_parameters())
        names = select_names(list(params), modules)

        def gen() -> Iterator[tuple[str, torch.Tensor]]:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                for n in names:
                    if n not in keys:
                        raise KeyError(f"{path}: no tensor {n!r} (previous checkpoint of another architecture?)")
                    prev = f.get_tensor(n)
                    cur = params[n].detach()
                    if prev.shape != cur.shape:
                        raise ValueError(f"{path}: {n} has shape {tuple(prev.shape)}, current {tuple(cur.shape)}")
                    yield n, cur.float() - prev.to(cur.device).float()

        return gen()

    def close(self) -> None:
        if self._dynamics is not None:
            self._dynamics.clear()
        self._dynamics = None
        super().close()
