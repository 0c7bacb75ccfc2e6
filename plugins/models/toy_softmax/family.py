"""The toy softmax family: trains its configurations once (batched), caches them, serves checkpoints."""

from __future__ import annotations

import hashlib
import itertools
import os
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harness.api import Checkpoint, CheckpointRef, FieldUnavailable, ModelFamily
from harness.delta import delta_field, offers_delta
from harness.params import Params, param
from harness.lm import select_names
from harness.weights import TensorWeights
from harness_plugins.models.toy_softmax.train import ToyConfig, TrainResult, checkpoint_steps, rms_normalise, train

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ToySoftmaxFamily(ModelFamily):
    """Teacher-student linear softmax head learning a peaked target (the one-third time-scaling model)."""

    name = "toy_softmax"

    class Params(Params):
        d: int = param(32, "input dimension", ge=1)
        vocab: int = param(128, "number of classes V", ge=2)
        temperature: list[float] = param([1e-3, 1e-2, 1e-1], "teacher temperature T (small = peaked); float or "
                                         "list", gt=0)
        optimizer: str = param("sgd", "sgd | adam", choices=("sgd", "adam"))
        lr: list[float] = param([30.0], "learning rate (float or list)", gt=0)
        lr_schedule: str = param("constant", "constant | cosine (to 10%); tau = cumulative lr either way",
                                 choices=("constant", "cosine"))
        batch_size: int = param(1024, "fresh batch every step", ge=1)
        steps: int = param(2000, "optimiser steps", ge=1)
        seeds: list[int] = param([0], "int or list")
        n_checkpoints: int = param(24, "log-spaced checkpoint grid (plus step 0)", ge=1)
        eval_batches: int = param(4, "held-out batches of batch_size for the `loss` metric", ge=1)
        device: str = param("cpu", "where the configurations train", in_config=False)
        threads: int = param(1, "torch threads while training and, process-wide, for the metrics that measure "
                             "its checkpoints (0 = torch's default); 1: small ops, a second thread is 8-40x "
                             "slower on a busy machine", ge=0, hash_default=False)

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.temperatures, self.lrs = self.temperature, self.lr
        self.n_eval = self.eval_batches
        self.data_seed = int(self.data.get("seed", 1234))
        self.configs = [
            ToyConfig(t, lr, s) for t, lr, s in itertools.product(self.temperatures, self.lrs, self.seeds)
        ]
        self._result: TrainResult | None = None
        #: (config index, split) -> per eval batch (teacher probabilities, teacher's sum p log p):
        #: the same for every checkpoint of a run, computed once (a warm run re-measures every
        #: checkpoint; the teacher's side was 2/3 of `per_example_loss`, profiled)
        self._teacher: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._val: dict[int, list[torch.Tensor]] = {}  # seed -> validation inputs (read-only)

    # -- identity -----------------------------------------------------------------------
    @property
    def size(self) -> str:
        return f"d{self.d}-V{self.vocab}"

    def model_id(self, cfg: ToyConfig) -> str:
        return f"toy_softmax/T={cfg.temperature:g},lr={cfg.lr:g},seed={cfg.seed}"

    def _train_key(self) -> str:
        spec = {
            "v": FORMAT_VERSION, "d": self.d, "vocab": self.vocab, "optimizer": self.optimizer,
            "schedule": self.lr_schedule, "batch": self.batch_size, "steps": self.steps,
            "n_ckpt": self.n_checkpoints, "configs": [vars(c) for c in self.configs],
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    # -- training (once, cached) --------------------------------------------------------
    def prepare(self) -> None:
        if self._result is not None:
            return
        if self.threads and torch.get_num_threads() != self.threads:
            # process-wide: the metrics that follow measure these small tensors too (a warm run's
            # loss evaluation was 0.6 s per checkpoint with 2 threads on the busy 2 cores, profiled)
            torch.set_num_threads(self.threads)
        cache = self.workdir / self._train_key() if self.workdir else None
        if cache and (cache / "trained.safetensors").exists():
            self._result = self._load_cache(cache)
            logger.info("toy_softmax: reusing trained configurations from %s", cache)
            return
        logger.info("toy_softmax: training %d configurations x %d steps (batched)", len(self.configs), self.steps)
        self._result = train(
            self.configs, d=self.d, vocab=self.vocab, steps=self.steps, batch_size=self.batch_size,
            optimizer=self.optimizer, ckpt_steps=checkpoint_steps(self.steps, self.n_checkpoints),
            lr_schedule=self.lr_schedule, device=self.device, threads=self.threads,
        )
        if cache:
            self._save_cache(cache, self._result)

    def _save_cache(self, cache: Path, r: TrainResult) -> None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"trained.safetensors.tmp-{os.getpid()}"  # concurrent jobs never share a temp file
        save_file(
            {"student": r.student.contiguous(), "teacher": r.teacher.contiguous(),
             "train_loss": r.train_loss.contiguous(), "learning_rate": r.learning_rate.contiguous(),
             "ckpt_steps": torch.tensor(r.ckpt_steps)},
            str(tmp),
        )
        tmp.replace(cache / "trained.safetensors")

    def _load_cache(self, cache: Path) -> TrainResult:
        t = load_file(str(cache / "trained.safetensors"))
        return TrainResult(self.configs, t["ckpt_steps"].tolist(), t["student"], t["teacher"], t["train_loss"],
                           t["learning_rate"])

    @property
    def result(self) -> TrainResult:
        self.prepare()
        assert self._result is not None
        return self._result

    # -- the family interface -----------------------------------------------------------
    def checkpoints(self) -> Iterator[CheckpointRef]:
        r = self.result
        n_params = self.d * self.vocab
        for k, cfg in enumerate(self.configs):
            for j, step in enumerate(r.ckpt_steps):
                lr = float(r.learning_rate[k, min(step, self.steps - 1)])
                yield CheckpointRef(
                    family=self.name, model_id=self.model_id(cfg), size=self.size, step=step,
                    tokens_seen=step * self.batch_size, learning_rate=lr, n_params=n_params,
                    meta={"config_index": k, "ckpt_index": j, "temperature": cfg.temperature, "lr": cfg.lr,
                          "seed": cfg.seed},
                )

    def load(self, ref: CheckpointRef) -> ToySoftmaxCheckpoint:
        r = self.result
        k, j = ref.meta["config_index"], ref.meta["ckpt_index"]
        return ToySoftmaxCheckpoint(self, ref, k, r.student[k, j].clone())

    def history(self, model_id: str):
        import pandas as pd

        r = self.result
        k = next(i for i, c in enumerate(self.configs) if self.model_id(c) == model_id)
        lr = r.learning_rate[k].double()
        return pd.DataFrame({
            "step": range(1, self.steps + 1),
            "loss": r.train_loss[k].double().numpy(),
            "learning_rate": lr.numpy(),
            "tau": torch.cumsum(lr, 0).numpy(),
            "tokens_seen": [s * self.batch_size for s in range(1, self.steps + 1)],
        })

    def describe(self) -> dict[str, Any]:
        return {"configs": [vars(c) for c in self.configs], "size": self.size, "train_key": self._train_key()}

    # -- evaluation data shared by every checkpoint -------------------------------------
    def eval_inputs(self, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(self.data_seed * 1_000_003 + seed)
        return [rms_normalise(torch.randn(self.batch_size, self.d, generator=g)) for _ in range(self.n_eval)]


class ToySoftmaxCheckpoint(Checkpoint):
    """One student at one step. Batches are input tensors (B, d); the loss is KL(teacher || student)."""

    WEIGHT = "student.weight"

    def __init__(self, family: ToySoftmaxFamily, ref: CheckpointRef, index: int, weight: torch.Tensor):
        super().__init__(ref)
        self.family, self.index = family, index
        self.temperature = family.configs[index].temperature
        self.teacher = family.result.teacher[index]
        self._model = torch.nn.Linear(family.d, family.vocab, bias=False)
        with torch.no_grad():
            self._model.weight.copy_(weight)
        self._model.eval()
        self._batches: list[torch.Tensor] | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    def eval_batches(self, split: str = "val") -> list[torch.Tensor]:
        if split not in ("val", "train"):
            raise FieldUnavailable(f"toy_softmax has splits 'val' and 'train', not {split!r}")
        seed = self.family.configs[self.index].seed + (0 if split == "val" else 7919)
        if split != "val":
            return self.family.eval_inputs(seed)
        if self._batches is None:  # one list per seed, shared by every checkpoint of the family
            self._batches = self.family._val.get(seed) or self.family._val.setdefault(seed, self.family.eval_inputs(seed))
        return self._batches

    @property
    def data_fingerprint(self) -> str:
        cfg = self.family.configs[self.index]
        spec = f"toy_softmax:val:seed={cfg.seed}:data_seed={self.family.data_seed}:n={self.family.n_eval}x{self.family.batch_size}:d={self.family.d}"
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def teacher_logits(self, batch: torch.Tensor) -> torch.Tensor:
        return batch @ self.teacher.T / self.temperature

    def logits(self, batch: Any, model: torch.nn.Module | None = None) -> torch.Tensor:
        return (model or self._model)(batch)

    def per_example_loss(self, batch: Any, model: torch.nn.Module | None = None) -> torch.Tensor:
        """KL(teacher || student) per example: sum_v p_t log p_t - sum_v p_t log p_s."""
        p_t, neg_entropy = self._teacher_side(batch)
        log_ps = torch.log_softmax(self.logits(batch, model), dim=-1)
        return neg_entropy - (p_t * log_ps).sum(-1)

    def _teacher_side(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_t, sum_v p_t log p_t) of one batch; cached for this run's validation batches."""
        batches = self._batches
        if batches is not None:
            for i, b in enumerate(batches):
                if b is batch:
                    key = (self.index, "val")
                    cached = self.family._teacher.get(key)
                    if cached is None:
                        cached = self.family._teacher[key] = [self._teacher_of(x) for x in batches]
                    return cached[i]
        return self._teacher_of(batch)

    def _teacher_of(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            log_pt = torch.log_softmax(self.teacher_logits(batch), dim=-1)
            p_t = log_pt.exp()
            return p_t, (p_t * log_pt).sum(-1)

    # -- fields ---------------------------------------------------------------------------
    def field_kinds(self) -> tuple[str, ...]:
        """weights and gradient always; delta when there is a previous selected checkpoint."""
        return ("weights", "delta", "gradient") if offers_delta(self) else ("weights", "gradient")

    def field(self, kind: str, modules: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        if not select_names([self.WEIGHT], modules):
            return iter(())
        weight = self._model.weight.detach()
        if kind == "weights":
            return iter([(self.WEIGHT, weight)])
        if kind == "delta":  # the shared delta field over the in-memory trajectory
            return delta_field(self, TensorWeights({self.WEIGHT: weight}), lambda prev: TensorWeights(
                {self.WEIGHT: self.family.result.student[self.index, prev.meta["ckpt_index"]]}))
        if kind == "gradient":
            w = self._model.weight.detach().clone().requires_grad_(True)
            batch = self.eval_batches("val")[0]
            log_pt = torch.log_softmax(self.teacher_logits(batch), dim=-1)
            loss = (log_pt.exp() * (log_pt - torch.log_softmax(batch @ w.T, dim=-1))).sum(-1).mean()
            (grad,) = torch.autograd.grad(loss, w)
            return iter([(self.WEIGHT, grad)])
        return super().field(kind, modules)
