"""`subspace`: top Hessian eigenpairs, the gradient's fraction in the top subspace, and the
stability of that subspace between checkpoints (Gur-Ari, Roberts & Dyer 2018, "Gradient
descent happens in a tiny subspace"; caveat: Song, Ahn & Yun 2025).

Checkpoint scope, on a fixed analysis batch (``split``, first ``n_batches`` batches):

- ``eigenvalue`` (task ``i=1..k``): top-k eigenvalues (largest algebraic) of the Hessian of the
  mean loss, by scipy's Lanczos (``eigsh``, ``which='LA'``) over Hessian-vector products;
  ``eigen_residual`` (task ``i=..``): ||Hv - lambda v|| / |lambda| of each pair.
- ``f_top`` (task ``k=..``): ||P_k g||^2 / ||g||^2 for the full analysis-batch gradient;
  ``f_top_minibatch``: the same for ``n_minibatches`` gradients of ``minibatch_size``
  examples drawn (seeded, without replacement) from the analysis batch (value = mean,
  stderr, spread in ``extra``); ``f_top_chance``: k / P.
- ``grad_norm``: ||g||; ``hessian_trace`` (when ``trace_samples`` > 0): Hutchinson estimate.

Pair scope, from the eigenvectors cached per checkpoint (float32 npy under the metric's
artifact directory): ``overlap_previous`` and ``overlap_reference`` (task ``k=..``):
||V_k(t1)^T V_k(t2)||_F^2 / k, against the previous selected checkpoint and against
``reference_step`` (default: the earliest cached step of the run), with ``overlap_chance``
= k / P. Every record's ``extra`` carries the number of Hessian-vector products spent.

Usage::

    python -m harness model=toy_softmax metric=subspace metric.subspace.ks=[1,5,10]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.api import CheckpointContext, Measurement, Metric, PairContext, ParameterError
from harness.params import Params, param

from . import cache
from .objective import HVP_METHODS, FlatObjective, analysis_mode, batch_len, batches_fingerprint, concat_batches, take
from .spectrum import f_top, hutchinson_trace, residuals, subspace_overlap, top_eigenpairs

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)


def _int_list(key: str, value: Any) -> list[int]:
    try:
        items = [value] if isinstance(value, int) else list(value)
        out = [int(v) for v in items]
        if any(o != v for o, v in zip(out, items)):
            raise ValueError
    except (TypeError, ValueError):
        raise ParameterError(key, value, "a non-empty list of integers >= 1") from None
    if not out or min(out) < 1:
        raise ParameterError(key, value, "a non-empty list of integers >= 1")
    return sorted(set(out))


def _split(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("split")
    return value


def _patterns(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(m, str) and m for m in items):
        raise ValueError("modules")
    return items


def _zero_if_null(value: Any) -> Any:
    return 0 if value is None else value


class SubspaceMetric(Metric):
    """Top-k Hessian eigenpairs, gradient fraction in their span, and their overlap over training."""

    name = "subspace"
    version = "1"

    class Params(Params):
        ks: list[int] = param([1, 2, 5, 10, 20], "subspace sizes k for f_top and overlap; max(ks) eigenpairs are "
                              "computed", convert=lambda v: _int_list("ks", v))
        split: str = param("val", "evaluation split whose batches form the fixed analysis batch",
                           convert=_split, allowed="a non-empty split name (e.g. val, train)")
        n_batches: int | None = param(None, "use only the first N batches of that split (null: all)", ge=1)
        modules: list[str] | None = param(None, "glob patterns on parameter names (e.g. [\"gpt_neox.layers.1.*\"]); "
                                          "null: all", convert=_patterns,
                                          allowed="null or a non-empty list of glob patterns on parameter names")
        n_coords: int | None = param(None, "only N random coordinates of the selected tensors (same set at every "
                                     "checkpoint)", ge=2)
        coords_seed: int | None = param(None, "seed of that coordinate draw (null: the run seed)", ge=0)
        hvp: str = param("double_backward", "Hessian-vector product: double_backward | fwd_rev | linearize (see "
                         "docs/subspace.md)", choices=HVP_METHODS)
        eig_tol: float = param(1e-3, "Lanczos (scipy eigsh, ARPACK) tolerance: Ritz residual relative to "
                               "|eigenvalue|", gt=0, lt=1)
        eig_maxiter: int | None = param(None, "ARPACK restarts limit (null: scipy's default, 10 * P)", ge=1)
        residuals: bool = param(True, "compute ||Hv - lambda v|| / |lambda| for each pair (k extra products)")
        minibatch_size: int = param(32, "examples per mini-batch gradient (state the training batch size here)",
                                    ge=1)
        n_minibatches: int = param(8, "mini-batch gradients for f_top_minibatch (0: off)", ge=0,
                                   convert=_zero_if_null)
        trace_samples: int = param(0, "Hutchinson probes for the Hessian trace (0: off, else >= 2)", ge=0,
                                   convert=_zero_if_null)
        reference_step: int | None = param(None, "step for overlap_reference (null: the earliest cached step of "
                                           "the run)", ge=0)
        max_params: int = param(5_000_000, "skip (with a reason) when more parameters are selected; use "
                                "modules/n_coords", ge=2)

        def check(self) -> None:
            """A Hutchinson estimate needs two probes at least."""
            if self.trace_samples == 1:
                raise ParameterError("trace_samples", 1, "0 (off) or an integer >= 2")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.k = max(self.ks)

    # -- dispatch by scope ------------------------------------------------------------
    def measure_checkpoint(self, ctx: CheckpointContext) -> list[Measurement]:
        """Eigenpairs, f_top, gradient norm (and trace) at one checkpoint; caches the eigenvectors."""
        return list(self._measure_checkpoint(ctx))

    def measure_pair(self, ctx: PairContext) -> list[Measurement]:
        """Overlap of the top subspaces with the previous and the reference checkpoint."""
        return list(self._measure_pair(ctx))

    # -- shared pieces ----------------------------------------------------------------
    def _cache_dir(self, ctx: Any, model_id: str):
        """Per model and per eigen-relevant configuration (a different subset or batch must
        not be compared with this one)."""
        key = json.dumps(
            {"split": self.split, "n_batches": self.n_batches, "modules": self.modules, "n_coords": self.n_coords,
             "k": self.k, "eig_tol": self.eig_tol, "seed": ctx.seed, "coords_seed": self._coords_seed(ctx)},
            sort_keys=True,
        )
        return ctx.artifact_dir("eigvecs", model_id, hashlib.sha256(key.encode()).hexdigest()[:12])

    def _coords_seed(self, ctx: Any) -> int:
        return ctx.seed if self.coords_seed is None else self.coords_seed

    def _objective(self, ctx: Any) -> tuple[FlatObjective, str]:
        ckpt = ctx.checkpoint
        batches = list(ckpt.eval_batches(self.split))
        if self.n_batches is not None:
            batches = batches[: self.n_batches]
        fingerprint = batches_fingerprint(batches, ckpt.data_fingerprint)
        obj = FlatObjective(ckpt, batches, modules=self.modules, n_coords=self.n_coords,
                            seed=self._coords_seed(ctx))
        return obj, fingerprint

    def _eigen(self, obj: FlatObjective, op, seed: int) -> tuple[Any, np.ndarray | None, int]:
        kw = {"dtype": obj.dtype, "device": obj.x0.device}
        pairs = top_eigenpairs(op, obj.P, self.k, seed=seed, tol=self.eig_tol, maxiter=self.eig_maxiter, **kw)
        before = op.count
        res = residuals(op, pairs.values, pairs.vectors, **kw) if self.residuals else None
        return pairs, res, op.count - before

    def _too_big(self, obj: FlatObjective) -> str | None:
        if obj.P > self.max_params:
            return (
                f"{obj.P} parameters selected > max_params={self.max_params}: restrict with "
                f"metric.subspace.modules=[...] or metric.subspace.n_coords=N"
            )
        if self.k >= obj.P:
            return f"k={self.k} (max of ks) must be < the {obj.P} selected parameters"
        return None

    # -- checkpoint scope -------------------------------------------------------------
    def _measure_checkpoint(self, ctx: CheckpointContext) -> Iterator[Measurement]:
        ckpt = ctx.checkpoint
        try:
            model = ckpt.model
            with analysis_mode(model):
                obj, fingerprint = self._objective(ctx)
                reason = self._too_big(obj)
                if reason:
                    yield Measurement.skipped("eigenvalue", reason)
                    return
                yield from self._checkpoint_measurements(ctx, obj, fingerprint)
        except NotImplementedError as exc:
            yield Measurement.skipped("eigenvalue", f"checkpoint lacks what the Hessian analysis needs: {exc}")

    def _checkpoint_measurements(self, ctx: CheckpointContext, obj: FlatObjective, fp: str) -> Iterator[Measurement]:
        ref = ctx.checkpoint.ref
        op = obj.hvp_operator(self.hvp)
        pairs, res, n_res = self._eigen(obj, op, ctx.seed)
        P, kw = obj.P, {"dtype": obj.dtype, "device": obj.x0.device}
        meta = {
            "eigenvalues": pairs.values.tolist(),
            "residuals": None if res is None else res.tolist(),
            "objective": obj.describe(),
            "fingerprint": fp,
            "split": self.split,
        }
        cache.save(self._cache_dir(ctx, ref.model_id), ref.step, pairs.vectors, meta)

        g_t = getattr(obj, "grad_full", None)
        g = (g_t if g_t is not None else obj.gradient()).to("cpu", torch.float64).numpy()
        grad_norm = float(np.linalg.norm(g))
        mb = self._minibatch_ftop(obj, pairs.vectors, ctx.seed)

        trace = None
        n_trace_before = op.count
        if self.trace_samples:
            trace = hutchinson_trace(op, P, self.trace_samples, seed=ctx.seed, **kw)
        n_trace = op.count - n_trace_before

        extra = {
            "n_hvp": op.count,
            "n_hvp_eigsh": pairs.n_products,
            "n_hvp_residual": n_res,
            "n_hvp_trace": n_trace,
            "hvp_method": self.hvp,
            "n_params": P,
            "analysis_terms": obj.n_total,
            "analysis_fingerprint": fp,
            "analysis_loss": obj.loss(),
        }
        if obj.index is not None:
            extra["n_selected"] = obj.n_selected
        for i, lam in enumerate(pairs.values, start=1):
            yield Measurement("eigenvalue", float(lam), task=f"i={i}", extra=extra)
            if res is not None:
                yield Measurement("eigen_residual", float(res[i - 1]), task=f"i={i}", higher_is_better=False, extra=extra)
        yield Measurement("grad_norm", grad_norm, extra=extra)
        if grad_norm == 0.0:
            for k in self.ks:
                yield Measurement.skipped("f_top", "the analysis-batch gradient is exactly zero", task=f"k={k}")
        else:
            for k, value in f_top(pairs.vectors, g, self.ks).items():
                yield Measurement("f_top", value, task=f"k={k}", extra={**extra, "chance": k / P})
        for k in self.ks:
            yield Measurement("f_top_chance", k / P, task=f"k={k}", extra=extra)
        if isinstance(mb, str):
            for k in self.ks:
                yield Measurement.skipped("f_top_minibatch", mb, task=f"k={k}")
        elif mb is not None:
            for k in self.ks:
                vals = mb[k]
                std = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
                yield Measurement(
                    "f_top_minibatch", float(vals.mean()),
                    stderr=std / math.sqrt(len(vals)) if len(vals) > 1 else None, n=len(vals), task=f"k={k}",
                    extra={**extra, "chance": k / P, "std": std, "min": float(vals.min()), "max": float(vals.max()),
                           "minibatch_size": self.minibatch_size},
                )
        if trace is not None:
            yield Measurement("hessian_trace", trace[0], stderr=trace[1], n=self.trace_samples, extra=extra)

    def _minibatch_ftop(self, obj: FlatObjective, vectors: np.ndarray, seed: int) -> dict[int, np.ndarray] | str | None:
        """f_top of ``n_minibatches`` mini-batch gradients (examples drawn from the analysis
        batch without replacement within a mini-batch); a reason string when impossible."""
        if not self.n_minibatches:
            return None
        try:
            pool = concat_batches(obj.batches)
            n_pool = batch_len(pool)
        except (TypeError, RuntimeError) as exc:
            return f"cannot draw mini-batches from this family's batches: {exc}"
        if self.minibatch_size > n_pool:
            return f"minibatch_size={self.minibatch_size} exceeds the {n_pool} examples of the analysis batch"
        gen = torch.Generator().manual_seed(int(seed) + 1)
        out: dict[int, list[float]] = {k: [] for k in self.ks}
        for _ in range(self.n_minibatches):
            idx = torch.randperm(n_pool, generator=gen)[: self.minibatch_size]
            g = obj.gradient(take(pool, idx)).to("cpu", torch.float64).numpy()
            if not np.any(g):
                continue
            for k, v in f_top(vectors, g, self.ks).items():
                out[k].append(v)
        if not out[self.ks[0]]:
            return "every mini-batch gradient is exactly zero"
        return {k: np.asarray(v) for k, v in out.items()}

    # -- pair scope -------------------------------------------------------------------
    def _current_vectors(self, ctx: PairContext, directory) -> tuple[np.ndarray, dict[str, Any], int] | str:
        """The current checkpoint's eigenvectors: from the cache, else computed (and cached);
        a reason string when the analysis does not apply."""
        ref = ctx.checkpoint.ref
        hit = cache.load(directory, ref.step)
        if hit is not None:
            return hit[0], hit[1], 0
        logger.info("subspace: no cached eigenvectors for %s step %s; computing them", ref.model_id, ref.step)
        with analysis_mode(ctx.checkpoint.model):
            obj, fp = self._objective(ctx)
            reason = self._too_big(obj)
            if reason:
                return reason
            op = obj.hvp_operator(self.hvp)
            pairs, res, _ = self._eigen(obj, op, ctx.seed)
        meta = {"eigenvalues": pairs.values.tolist(), "residuals": None if res is None else res.tolist(),
                "objective": obj.describe(), "fingerprint": fp, "split": self.split}
        cache.save(directory, ref.step, pairs.vectors, meta)
        return pairs.vectors.astype(np.float32), {**meta, "step": ref.step}, op.count

    def _measure_pair(self, ctx: PairContext) -> Iterator[Measurement]:
        ref = ctx.checkpoint.ref
        directory = self._cache_dir(ctx, ref.model_id)
        try:
            current = self._current_vectors(ctx, directory)
        except NotImplementedError as exc:
            current = f"checkpoint lacks what the Hessian analysis needs: {exc}"
        if isinstance(current, str):
            yield Measurement.skipped("overlap_previous", current)
            return
        v_cur, meta_cur, n_hvp = current
        P = int(v_cur.shape[0])
        extra = {"n_hvp": n_hvp, "n_params": P, "step": ref.step}
        targets = [("overlap_previous", ctx.previous.step)]
        ref_step = self.reference_step
        if ref_step is None:
            cached = cache.steps(directory)
            ref_step = cached[0] if cached else None
        targets.append(("overlap_reference", ref_step))
        for measure, step in targets:
            if step is None:
                for k in self.ks:
                    yield Measurement.skipped(measure, "no cached eigenvectors for any reference step", task=f"k={k}")
                continue
            other = cache.load(directory, step)
            if other is None:
                for k in self.ks:
                    yield Measurement.skipped(
                        measure, f"no cached eigenvectors for step {step} (run the checkpoint scope there first)",
                        task=f"k={k}",
                    )
                continue
            v_other, meta_other = other
            mismatch = self._incompatible(meta_cur, meta_other)
            if mismatch:
                for k in self.ks:
                    yield Measurement.skipped(measure, f"step {step} is not comparable: {mismatch}", task=f"k={k}")
                continue
            warning = None
            if meta_other.get("fingerprint") != meta_cur.get("fingerprint"):
                warning = "the analysis batches of the two checkpoints differ (fingerprints differ)"
            for k in self.ks:
                yield Measurement(
                    measure, subspace_overlap(v_other, v_cur, k), task=f"k={k}", warning=warning,
                    extra={**extra, "other_step": int(step), "chance": k / P},
                )
        for k in self.ks:
            yield Measurement("overlap_chance", k / P, task=f"k={k}", extra=extra)

    @classmethod
    def plots(cls, records: pd.DataFrame, out_dir: Path) -> list[Path]:
        """f_top and subspace overlap against step, one figure per model (see `plots`)."""
        from .plots import draw

        return draw(records, out_dir)

    @staticmethod
    def _incompatible(a: dict[str, Any], b: dict[str, Any]) -> str | None:
        oa, ob = a.get("objective", {}), b.get("objective", {})
        for key in ("n_params", "coords_sha"):
            if oa.get(key) != ob.get(key):
                return f"{key} {ob.get(key)} vs {oa.get(key)}"
        return None
