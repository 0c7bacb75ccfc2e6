"""A loaded Pythia checkpoint: the GPT-NeoX model, fixed evaluation batches, per-token loss, and
streamed tensor fields.

Fields (all named as in the checkpoint's safetensors, e.g. ``embed_out.weight``; selection by
kind or glob, see `modules`):

* ``weights``: read tensor by tensor from the checkpoint's files, in the model's dtype.
* ``delta``: ``this - previous`` in float32, streamed from the two files with peak memory about
  one tensor (the core's shared `harness.delta.delta_field`). ``previous`` is the previous *selected* checkpoint of
  the same run: the runner sets ``checkpoint.previous`` (a CheckpointRef); the family also
  fills it from the last checkpoint of that run it loaded. ``field_meta("delta")`` gives
  ``from_step``, ``to_step`` and ``step_gap``.
* ``gradient``: the raw gradient of the mean next-token loss on a fixed, fingerprinted probe
  batch. Read from ``probe_gradients.safetensors`` when the builder stored it beside the
  weights, else computed on demand (Hub checkpoints). ``field_meta("gradient")`` gives the probe
  fingerprint, the source (``stored``/``computed``) and the probe loss.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.api import CheckpointRef, FieldUnavailable
from harness.lm import CausalLMCheckpoint, per_token_loss

from . import modules as M
from harness.delta import delta_field, delta_meta, offers_delta
from harness.weights import CheckpointFileError, WeightFiles

logger = logging.getLogger(__name__)

#: transformers 5 renames GPT-NeoX's unembedding in memory; files keep the Hub's name
_PARAM_ALIASES = {"lm_head.weight": "embed_out.weight"}


class PythiaCheckpoint(CausalLMCheckpoint):
    """`CausalLMCheckpoint` plus Pythia's streamed fields (weights, delta, gradient)."""

    def __init__(
        self,
        ref: CheckpointRef,
        model: torch.nn.Module,
        *,
        weights: WeightFiles,
        previous_weights: Callable[[CheckpointRef], WeightFiles],
        previous: CheckpointRef | None = None,
        probe: dict[str, Any] | None = None,
        stored_gradients: Path | None = None,
        default_modules: str = "pico",
        splits: dict[str, Sequence[torch.Tensor]] | None = None,
        data_source: str = "",
        tokenizer: Any = None,
        device: str = "cpu",
    ):
        super().__init__(ref, model, splits=splits, data_source=data_source, tokenizer=tokenizer, device=device)
        self.weights = weights
        self._previous_weights = previous_weights
        self.previous = previous
        self.probe = probe
        self._stored_gradients = stored_gradients
        self.default_modules = default_modules
        self.n_heads = int(model.config.num_attention_heads)
        self.dtype = next(model.parameters()).dtype
        self._meta: dict[str, dict[str, Any]] = {}

    # -- fields -------------------------------------------------------------------------
    def field_kinds(self) -> tuple[str, ...]:
        kinds = ["weights"]
        if offers_delta(self):
            kinds.append("delta")
        if self._stored_gradients is not None or self.probe is not None:
            kinds.append("gradient")
        return tuple(kinds)

    def field_meta(self, kind: str) -> dict[str, Any]:
        """Facts about the last produced field of ``kind`` (step gap, probe fingerprint)."""
        if kind == "delta" and offers_delta(self):
            return delta_meta(self)
        return dict(self._meta.get(kind, {}))

    def _plan(self, shapes: dict[str, tuple[int, ...]], modules: Sequence[str] | str | None) -> list[M.Pick]:
        picks = M.plan(shapes, modules, self.n_heads, self.default_modules)
        if not picks:
            raise ValueError(f"no tensor of {self.ref.model_id}@{self.ref.label} matches modules={modules!r}")
        return picks

    def field(self, kind: str, modules: Sequence[str] | str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        if kind == "weights":
            return self._weights(modules)
        if kind == "delta":
            return self._delta(modules)
        if kind == "gradient":
            return self._gradient(modules)
        return super().field(kind, modules)

    def _weights(self, modules) -> Iterator[tuple[str, torch.Tensor]]:
        shapes = {n: e.shape for n, e in self.weights.entries.items()}
        for pick in self._plan(shapes, modules):
            yield pick.name, pick.apply(self.weights.read(pick.source, self.dtype))

    def _delta(self, modules) -> Iterator[tuple[str, torch.Tensor]]:
        shapes = {n: e.shape for n, e in self.weights.entries.items()}
        by_source: dict[str, list[M.Pick]] = {}
        if self.previous is not None:  # else delta_field says why there is no delta
            for p in self._plan(shapes, modules):
                by_source.setdefault(p.source, []).append(p)
        deltas = delta_field(self, self.weights, self._previous_weights, list(by_source))

        def picked() -> Iterator[tuple[str, torch.Tensor]]:
            for name, d in deltas:
                for pick in by_source[name]:
                    yield pick.name, pick.apply(d)

        return picked()

    def _gradient(self, modules) -> Iterator[tuple[str, torch.Tensor]]:
        if self._stored_gradients is not None:
            grads = WeightFiles.open([self._stored_gradients])
            self._meta["gradient"] = {"source": "stored", **(self.probe or {}).get("meta", {})}
            shapes = {n: e.shape for n, e in grads.entries.items()}
            for pick in self._plan(shapes, modules):
                yield pick.name, pick.apply(grads.read(pick.source, torch.float32))
            return
        if self.probe is None:
            raise FieldUnavailable(f"{self.ref.model_id}@{self.ref.label}: no probe batch for gradients")
        grads, loss = self.compute_probe_gradients()
        self._meta["gradient"] = {"source": "computed", "probe_loss": loss, **self.probe.get("meta", {})}
        shapes = {n: tuple(g.shape) for n, g in grads.items()}
        for pick in self._plan(shapes, modules):
            yield pick.name, pick.apply(grads[pick.source])

    def compute_probe_gradients(self) -> tuple[dict[str, torch.Tensor], float]:
        """Gradient of the mean next-token loss on the probe batch, keyed by stored tensor name."""
        if self.probe is None:
            raise FieldUnavailable("no probe batch")
        return probe_gradients(self.model, self.probe["input_ids"].to(self.device))


def probe_gradients(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
    """Raw gradients (float32, on CPU) of the mean per-token loss, keyed as in safetensors files.
    The model is left unchanged (its .grad buffers are cleared)."""
    was_training = model.training
    model.eval()  # Pythia has no dropout; eval keeps it that way for any config
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out = model(input_ids=input_ids)
        loss = per_token_loss(out.logits, input_ids).mean()
        loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            grads[_PARAM_ALIASES.get(name, name)] = p.grad.detach().float().cpu().clone()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads, float(loss.detach())


def read_probe(path: Path) -> dict[str, Any]:
    """The builder's ``probe.json``: the probe token ids and their fingerprint."""
    try:
        raw = json.loads(path.read_text())
        ids = torch.tensor(raw["input_ids"], dtype=torch.long)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointFileError(f"{path}: unreadable probe description ({e})") from None
    meta = {k: raw[k] for k in ("fingerprint", "dataset_id", "split", "example_ids", "seq_len") if k in raw}
    return {"input_ids": ids, "meta": {"probe_fingerprint": meta.get("fingerprint"), **meta}}
