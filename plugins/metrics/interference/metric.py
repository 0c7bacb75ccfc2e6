"""The ``interference`` metric: zero-sum learning diagnostics (Mircea et al. 2025).

Checkpoint scope
    * loss-change interference with dt = 1: one optimiser step from the checkpoint on a fixed
      update batch, then D, M, |dL|, N and the noise baseline of the per-example loss changes
      on every evaluation split and on the update batch itself (``task`` = split, "update");
    * gradient opposition: mean per-coordinate D_j over the per-example gradients of the
      non-embedding weight matrices, per matrix (``layer``) and overall, with the 100-bin
      histogram of D_j in ``extra``;
    * the per-example losses of every split are cached (artifact) for the pair scope.
Pair scope
    * loss-change interference with dt = t: the cached losses of the previous checkpoint
      against the current one's.

Measures (``n`` = N, the number of per-example values)::

    D_dl_step  M_dl_step  dL_step  D_null_step     dt = 1   (task = split | "update")
    D_dl_pair  M_dl_pair  dL_pair  D_null_pair     dt = t   (task = split)
    D_grad_<example>  D_null_grad_<example>        example = sequence | token | position

Works for any family whose checkpoints offer ``model``, ``eval_batches(split)`` and
``per_example_loss(batch, model)``; what a checkpoint lacks becomes a ``skipped`` record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from harness.api import CheckpointContext, Measurement, Metric, PairContext
from harness.params import Params, param

from .loss_change import FunctionalModel, example_losses, load_losses, one_step_parameters, save_losses
from .opposition import DEFAULT_EXCLUDE, EXAMPLES, find_targets, opposition
from .stats import InterferenceStats, interference_stats, noise_baseline

logger = logging.getLogger(__name__)

OPTIMIZERS = ("auto", "checkpoint", "sgd", "adamw")
LOSS_MEASURES = ("D_dl", "M_dl", "dL", "D_null")


class InterferenceMetric(Metric):
    """Loss-change interference (dt = 1 and dt = t) and per-example gradient opposition."""

    name: ClassVar[str] = "interference"
    version: ClassVar[str] = "1"

    class Params(Params):
        splits: list[str] = param(["val"], "evaluation splits whose per-example loss changes are measured",
                                  min_len=1)
        max_batches: int | None = param(None, "cap on batches per split (null = all the family offers)", ge=1)
        loss_step: bool = param(True, "dt = 1: one optimiser step from each checkpoint (checkpoint scope)")
        loss_pair: bool = param(True, "dt = t: consecutive checkpoints (pair scope; losses cached as artifacts)")
        update_split: str = param("train", "split whose first batches make the update batch (falls back to "
                                  "splits[0], with a warning)")
        update_batches: int = param(1, "how many batches of update_split the one step averages over", ge=1)
        optimizer: str = param("auto", "auto = the checkpoint's stored state if any, else sgd | checkpoint | sgd "
                               "| adamw (fresh state)", choices=OPTIMIZERS)
        lr: float | None = param(None, "step size; null = the checkpoint ref's learning_rate (or the stored "
                                 "state's lr)", gt=0)
        weight_decay: float = param(0.0, "for the fresh sgd/adamw optimisers", ge=0)
        grad: bool = param(True, "per-coordinate gradient opposition D(grad l)")
        example: str = param("sequence", "sequence (one backward) | token (the paper's definition; ~seq_len "
                             "backwards) | position (rank-1 terms, cheap, not the paper's)", choices=EXAMPLES)
        grad_split: str = param("val", "split whose first grad_batches batches give the per-example gradients")
        grad_batches: int = param(1, "batches of grad_split for the per-example gradients", ge=1)
        include: list[str] = param(["*"], "glob patterns on parameter names of Linear/Conv1D weights")
        exclude: list[str] = param(list(DEFAULT_EXCLUDE), "patterns left out: embeddings and unembeddings, as in "
                                   "the paper")
        per_layer: bool = param(True, "also one record per weight matrix (layer = parameter name)")
        chunk_mb: float = param(256.0, "memory budget for per-example gradient chunks (MiB)", ge=1)
        bins: int = param(100, "histogram bins of D_j on [0, 1] (in extra)", ge=1, le=10000)

    # ---- dispatch by scope -------------------------------------------------------------------
    def measure_checkpoint(self, ctx: CheckpointContext) -> Iterator[Measurement]:
        """dt = 1 loss-change interference and gradient opposition; caches the per-split losses."""
        return self._checkpoint(ctx)

    def measure_pair(self, ctx: PairContext) -> Iterator[Measurement]:
        """dt = t loss-change interference from the cached losses of the previous checkpoint."""
        return self._pair(ctx)

    # ---- helpers ----------------------------------------------------------------------------
    def _batches(self, ckpt: Any, split: str, limit: int | None) -> list[Any]:
        batches = list(ckpt.eval_batches(split))
        if not batches:
            raise ValueError(f"split {split!r} has no batches")
        return batches[:limit] if limit else batches

    def _split_losses(self, ckpt: Any, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        return {s: example_losses(ckpt.per_example_loss, self._batches(ckpt, s, self.max_batches), model)
                for s in self.splits}

    @staticmethod
    def _cache_dir(ctx: Any, ref: Any):
        return ctx.artifact_dir("losses", ref.model_id, f"step{ref.step}")

    def _cached_or_computed(self, ctx: Any, ckpt: Any) -> dict[str, torch.Tensor]:
        """This checkpoint's per-split losses from the cache, computing and caching missing splits."""
        directory = self._cache_dir(ctx, ckpt.ref)
        found = load_losses(directory)
        have, meta = found if found else ({}, {})
        if meta.get("data_fingerprint") not in (None, ckpt.data_fingerprint) or meta.get("max_batches", self.max_batches) != self.max_batches:
            have = {}  # stale cache (other data or batch cap): recompute
        missing = [s for s in self.splits if s not in have]
        if missing:
            with _eval_mode(ckpt.model):
                for s in missing:
                    have[s] = example_losses(ckpt.per_example_loss, self._batches(ckpt, s, self.max_batches))
            save_losses(directory, have, {"data_fingerprint": ckpt.data_fingerprint, "step": ckpt.ref.step,
                                          "model_id": ckpt.ref.model_id, "max_batches": self.max_batches})
        return have

    @staticmethod
    def _loss_measures(stats: InterferenceStats, suffix: str, task: str, extra: dict[str, Any]) -> list[Measurement]:
        extra = {**extra, "sum": stats.sum, "N": stats.N}
        common = dict(n=stats.N, task=task, extra=extra)
        out = []
        if math.isnan(stats.D):
            out.append(Measurement.skipped(f"D_dl_{suffix}", "every per-example loss change is 0: D is undefined "
                                           "(did the weights change? lr 0 or identical checkpoints)", **common))
        else:
            out.append(Measurement(f"D_dl_{suffix}", stats.D, unit="fraction", **common))
        out.append(Measurement(f"M_dl_{suffix}", stats.M, unit="nats", **common))
        out.append(Measurement(f"dL_{suffix}", stats.dL, unit="nats", **common))
        out.append(Measurement(f"D_null_{suffix}", stats.D_null, unit="fraction", **common))
        return out

    def _failed(self, measures: Sequence[str], exc: BaseException, tasks: Sequence[str | None] = (None,)) -> list[Measurement]:
        if isinstance(exc, NotImplementedError):
            return [Measurement.skipped(m, f"checkpoint lacks a capability: {exc}", task=t) for m in measures for t in tasks]
        logger.exception("interference: %s failed", measures[0])
        return [Measurement.error(m, f"{type(exc).__name__}: {exc}", task=t) for m in measures for t in tasks]

    # ---- checkpoint scope -------------------------------------------------------------------
    def _checkpoint(self, ctx: CheckpointContext) -> Iterator[Measurement]:
        ckpt = ctx.checkpoint
        before: dict[str, torch.Tensor] | None = None
        if self.loss_pair or self.loss_step:
            try:
                before = self._cached_or_computed(ctx, ckpt)
            except Exception as exc:  # noqa: BLE001 - becomes a record, the other analyses go on
                # the per-split losses (dt = 1 reference and dt = t cache) could not be computed
                names = [f"{m}_step" for m in LOSS_MEASURES] if self.loss_step else ["loss_cache"]
                yield from self._failed(names, exc, self.splits)
        if self.loss_step and before is not None:
            yield from self._step(ckpt, before)
        if self.grad:
            yield from self._grad(ckpt)

    def _step(self, ckpt: Any, before: dict[str, torch.Tensor]) -> Iterator[Measurement]:
        names = [f"{m}_step" for m in LOSS_MEASURES]
        tasks = [*self.splits, "update"]
        try:
            model = ckpt.model
            stored = ckpt.optimizer_state() if self.optimizer in ("auto", "checkpoint") else None
            if self.optimizer == "checkpoint" and stored is None:
                yield from [Measurement.skipped(m, "optimizer=checkpoint but the family stores no optimizer state",
                                                task=t) for m in names for t in tasks]
                return
            opt = "checkpoint" if stored is not None else ("sgd" if self.optimizer == "auto" else self.optimizer)
            lr = self.lr if self.lr is not None else (None if opt == "checkpoint" else ckpt.ref.learning_rate)
            if opt != "checkpoint" and lr is None:
                yield from [Measurement.skipped(m, "no learning rate: the checkpoint ref has none; set "
                                                "metric.interference.lr", task=t) for m in names for t in tasks]
                return
            warning = None
            try:
                update = self._batches(ckpt, self.update_split, self.update_batches)
                update_split = self.update_split
            except NotImplementedError:
                update_split = self.splits[0]
                update = self._batches(ckpt, update_split, self.update_batches)
                warning = f"no split {self.update_split!r}: update batch taken from {update_split!r}"
            with _eval_mode(model):
                update_before = example_losses(ckpt.per_example_loss, update)
                new_params, info = one_step_parameters(
                    model, ckpt.per_example_loss, update, optimizer=opt, lr=lr, weight_decay=self.weight_decay,
                    stored_state=stored, fallback_lr=ckpt.ref.learning_rate,
                )
                fmodel = FunctionalModel(model, new_params)
                after = self._split_losses(ckpt, fmodel)
                after["update"] = example_losses(ckpt.per_example_loss, update, fmodel)
            del new_params, fmodel
        except Exception as exc:  # noqa: BLE001
            yield from self._failed(names, exc, tasks)
            return
        extra = {"dt": 1, "optimizer": info.optimizer, "optimizer_source": info.source, "lr": info.lr,
                 "update_split": update_split, "update_batches": len(update), "update_loss": info.update_loss,
                 "n_update_examples": info.n_update_examples, "notes": info.notes}
        for task in tasks:
            ref = update_before if task == "update" else before[task]
            try:
                if ref.shape != after[task].shape:
                    raise ValueError(f"loss shapes differ before/after the step: {tuple(ref.shape)} vs {tuple(after[task].shape)}")
                ms = self._loss_measures(interference_stats(after[task] - ref), "step", task, extra)
            except Exception as exc:  # noqa: BLE001
                ms = self._failed(names, exc, [task])
            for m in ms:
                m.warning = m.warning or warning
                yield m

    def _grad(self, ckpt: Any) -> Iterator[Measurement]:
        measure = f"D_grad_{self.example}"
        null = f"D_null_grad_{self.example}"
        try:
            model = ckpt.model
            targets, uncovered = find_targets(model, self.include, self.exclude)
            if not targets:
                yield Measurement.skipped(measure, "no Linear/Conv1D weight matrix matches include="
                                          f"{self.include} exclude={self.exclude}", task=self.grad_split)
                return
            batches = self._batches(ckpt, self.grad_split, self.grad_batches)
            with _eval_mode(model):
                res = opposition(model, ckpt.per_example_loss, batches, targets, example=self.example,
                                 chunk_mb=self.chunk_mb, bins=self.bins)
        except Exception as exc:  # noqa: BLE001
            yield from self._failed([measure], exc, [self.grad_split])
            return
        extra = {"example": self.example, "hist": res.hist, "hist_range": [0.0, 1.0], "n_coords": res.n_coords,
                 "n_zero_coords": res.n_zero, "n_matrices": len(targets), "uncovered": uncovered,
                 "notes": res.notes, "D_null": noise_baseline(res.n_examples)}
        if math.isnan(res.D):
            yield Measurement.skipped(measure, "every selected gradient coordinate is 0 for every example",
                                      n=res.n_examples, task=self.grad_split, extra=extra)
        else:
            yield Measurement(measure, res.D, n=res.n_examples, unit="fraction", task=self.grad_split, extra=extra)
        yield Measurement(null, noise_baseline(res.n_examples), n=res.n_examples, unit="fraction", task=self.grad_split)
        if self.per_layer:
            for name, (d, n, zero) in res.per_layer.items():
                if math.isnan(d):
                    yield Measurement.skipped(measure, "all coordinates of this matrix have zero gradient",
                                              task=self.grad_split, layer=name)
                else:
                    yield Measurement(measure, d, n=res.n_examples, unit="fraction", task=self.grad_split,
                                      layer=name, extra={"n_coords": n, "n_zero_coords": zero})

    # ---- pair scope -------------------------------------------------------------------------
    def _pair(self, ctx: PairContext) -> Iterator[Measurement]:
        names = [f"{m}_pair" for m in LOSS_MEASURES]
        if not self.loss_pair:
            return
        prev = ctx.previous
        found = load_losses(self._cache_dir(ctx, prev))
        if found is None:
            yield from [Measurement.skipped(m, f"no cached losses of the previous checkpoint (step {prev.step}): "
                                            "the checkpoint scope of interference did not run on it", task=s)
                        for m in names for s in self.splits]
            return
        prev_losses, prev_meta = found
        try:
            cur = self._cached_or_computed(ctx, ctx.checkpoint)
        except Exception as exc:  # noqa: BLE001
            yield from self._failed(names, exc, self.splits)
            return
        fp_prev, fp_cur = prev_meta.get("data_fingerprint"), ctx.checkpoint.data_fingerprint
        extra = {"dt": "t", "previous_step": prev.step, "step": ctx.checkpoint.ref.step}
        for s in self.splits:
            try:
                if fp_prev is not None and fp_cur is not None and fp_prev != fp_cur:
                    raise ValueError(f"evaluation data differ between step {prev.step} and {ctx.checkpoint.ref.step} "
                                     f"(fingerprints {fp_prev} vs {fp_cur})")
                if s not in prev_losses:
                    yield from [Measurement.skipped(m, f"split {s!r} not cached for step {prev.step}", task=s) for m in names]
                    continue
                if prev_losses[s].shape != cur[s].shape:
                    raise ValueError(f"split {s!r}: {prev_losses[s].numel()} cached losses at step {prev.step}, "
                                     f"{cur[s].numel()} now")
                yield from self._loss_measures(interference_stats(cur[s].double() - prev_losses[s].double()), "pair", s, extra)
            except Exception as exc:  # noqa: BLE001
                yield from self._failed(names, exc, [s])


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate without dropout; put the module back the way it was."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)
