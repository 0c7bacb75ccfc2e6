"""The Pico-LM family: ``pico-lm/pico-decoder-{tiny,small,medium,large}`` from the Hub, or
pico-train run directories on disk, through one code path.

    python -m harness model=pico model.size=tiny checkpoints=every_k metric=loss      # Hub
    python -m harness model=pico model.source=local model.root=runs/<run> metric=loss
    python -m harness model=pico model.source=local metric=loss     # builds pico_mini first

A local ``root`` is one run directory (``checkpoints/step_<N>/``) or a folder of runs (a
suite, e.g. the pico_mini build); every run is one ``model_id`` and its width is its ``size``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness import learning_dynamics as ld
from harness.api import CheckpointRef, ModelFamily, ParameterError, check_choice
from harness.params import Params, param
from harness_plugins.models.pico.checkpoint import PicoCheckpoint
from harness_plugins.models.pico.modeling import PICO_SIZES, PicoDecoderForCausalLM
from harness_plugins.models.pico.run import PicoRun, find_runs, learning_rate, n_params

logger = logging.getLogger(__name__)

SOURCES = ("hub", "local")
#: evaluation data when ``data=default``: Python's docs, cut into blocks with the run's tokenizer
DEFAULT_DATA: dict[str, Any] = {"name": "pydoc", "seq_len": 128, "batch_size": 8, "n_batches": 4,
                                "val_fraction": 0.1, "seed": 1234}


class PicoFamily(ModelFamily):
    """Pico-LM decoders (native pico-decoder, no remote code) with their learning dynamics."""

    name: ClassVar[str] = "pico"

    class Params(Params):
        size: list[str] | None = param("tiny", "hub: tiny | small | medium | large, or a list; local: filter runs "
                                       "by size label (d<width>) or run name, null = all")
        source: str = param("hub", "hub | local", choices=SOURCES)
        root: str | None = param(None, "local: a pico-train run dir (has checkpoints/) or a folder of runs; "
                                 "null = build pico_mini")
        repo_id: str | None = param(None, "hub: override pico-lm/pico-decoder-{size} (single size only)")
        branch: str | None = param(None, "hub: override the run branch pico-decoder-{size}-1")
        device: str = param("cpu", "where models run")
        normalise_gradients: bool = param(True, "divide stored gradients by pico-train's sub-batch count "
                                          "(mean-loss gradient)")
        build: dict[str, Any] = param({}, "pico_mini builder parameters when root is null, e.g. "
                                      "{widths: [16, 32], steps: 60}", convert=lambda v: {} if v is None else v)

        def check(self) -> None:
            """The Hub has four sizes, and a repo/branch override names one of them."""
            if self.source == "hub":
                if not self.size:
                    raise ParameterError("size", self.size, "one or more of " + ", ".join(PICO_SIZES))
                for s in self.size:
                    check_choice("size", s, tuple(PICO_SIZES))
                if (self.repo_id or self.branch) and len(self.size) > 1:
                    raise ParameterError("repo_id", self.repo_id, "only with a single size")

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.sizes = list(self.size or [])
        self.build_params = dict(self.build)
        self._runs: dict[str, PicoRun] | None = None
        self._batches: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}

    # -- runs -----------------------------------------------------------------------------
    def prepare(self) -> None:
        if self._runs is not None:
            return
        runs: list[PicoRun] = []
        if self.source == "hub":
            from harness_plugins.models.pico.hub import HubRun

            cache = (self.workdir / "hub") if self.workdir else None
            runs = [HubRun(s, repo_id=self.repo_id, branch=self.branch, cache_dir=cache) for s in self.sizes]
        else:
            root = self.root
            if root is None:  # the offline demo: build (or reuse) the pico_mini suite
                from harness_plugins.models.pico.build import build

                from harness_plugins.models.pico.build import DEFAULTS as BUILD_DEFAULTS

                params = dict(self.build_params)
                widths = params.get("widths", BUILD_DEFAULTS["widths"])
                labels = [f"d{w}" for w in (widths if isinstance(widths, (list, tuple)) else [widths])]
                missing = [s for s in self.sizes if s not in labels]
                if missing:  # before minutes of building: the suite's sizes follow from its widths
                    raise ParameterError("size", self.sizes, "sizes of the pico_mini suite: "
                                         f"{', '.join(labels)} (or null = all; widths set by model.build.widths)")
                if self.cache_root is not None:  # where `python -m harness.build suite=pico_mini` builds
                    params.setdefault("cache_dir", str(self.cache_root))
                root = str(build(**params))
            runs = [PicoRun(p) for p in find_runs(root)]
            if self.sizes:
                have = sorted({r.size for r in runs} | {r.run_name for r in runs})
                runs = [r for r in runs if r.size in self.sizes or r.run_name in self.sizes]
                if not runs:
                    raise ParameterError("size", self.sizes, f"sizes present under {root}: {', '.join(have)}")
        self._runs = {r.run_name: r for r in runs}

    @property
    def runs(self) -> dict[str, PicoRun]:
        self.prepare()
        assert self._runs is not None
        return self._runs

    def run(self, model_id: str) -> PicoRun:
        try:
            return self.runs[model_id]
        except KeyError:
            raise KeyError(f"pico: unknown model_id {model_id!r} (have {', '.join(self.runs)})") from None

    # -- family interface --------------------------------------------------------------------
    def checkpoints(self) -> Iterator[CheckpointRef]:
        for run in self.runs.values():
            cfg, tps = run.config, run.tokens_per_step()
            model_conf = None
            for step in run.steps():
                if model_conf is None:
                    model_conf = self._model_config(run, step)
                yield CheckpointRef(
                    family=self.name, model_id=run.run_name, size=run.size, step=step,
                    tokens_seen=step * tps, learning_rate=learning_rate(step, cfg),
                    revision=getattr(run, "_revision", lambda s: None)(step) if self.source == "hub" else None,
                    n_params=n_params(model_conf) if model_conf else None,
                    meta={"d_model": (model_conf or {}).get("d_model")},
                )

    def _model_config(self, run: PicoRun, step: int) -> dict[str, Any] | None:
        import json

        if self.source == "hub":  # config.json costs one small download; sizes are known
            from harness_plugins.models.pico.modeling import pico_config

            return pico_config(run.size).to_dict()
        try:
            return json.loads((run.step_dir(step) / "config.json").read_text())
        except (OSError, ValueError):
            return None

    def load(self, ref: CheckpointRef) -> PicoCheckpoint:
        run = self.run(ref.model_id)
        step_dir = run.step_dir(ref.step)
        for name in ("config.json", "model.safetensors"):
            if not (step_dir / name).is_file():
                raise FileNotFoundError(f"pico checkpoint file missing: {step_dir / name}")
        try:
            model = PicoDecoderForCausalLM.from_pretrained(step_dir, dtype=torch.float32)
        except Exception as e:  # a truncated/corrupt safetensors or config: name the folder
            raise RuntimeError(f"cannot load pico checkpoint {step_dir}: {type(e).__name__}: {e}") from e
        tokenizer = self._tokenizer(run, step_dir)
        batches = self._eval_batches(run, tokenizer, model.config.max_seq_len)

        def dynamics() -> ld.StepDynamics:
            return ld.StepDynamics(
                run.dynamics_dir(ref.step), step=ref.step, world_size=run.world_size(),
                batch_size=run.ld_batch_size(), normalise_gradients=self.normalise_gradients,
            )

        return PicoCheckpoint(
            ref, model, dynamics=dynamics, performance=lambda: run.eval_results(ref.step),
            previous_weights=lambda prev: self.run(prev.model_id).step_dir(prev.step) / "model.safetensors",
            weights_file=step_dir / "model.safetensors",
            splits={k: v.batches for k, v in batches.items()},
            data_source=batches["val"].fingerprint, device=self.device, tokenizer=tokenizer,
        )

    def _tokenizer(self, run: PicoRun, step_dir: Path) -> Any:
        if run.run_name not in self._tokenizers:
            from transformers import PreTrainedTokenizerFast

            if not (step_dir / "tokenizer.json").is_file():
                raise FileNotFoundError(f"pico checkpoint has no tokenizer.json: {step_dir}")
            self._tokenizers[run.run_name] = PreTrainedTokenizerFast.from_pretrained(str(step_dir))
        return self._tokenizers[run.run_name]

    def _eval_batches(self, run: PicoRun, tokenizer: Any, max_len: int) -> dict[str, Any]:
        """Fixed batches of the data node, tokenised with the run's tokenizer (cached per run);
        ``seq_len`` is capped at the model's ``max_seq_len`` (its RoPE table)."""
        from harness.data import batch_settings, fixed_batches, load_corpus, resolve_data_config, token_blocks

        if run.run_name not in self._batches:
            cfg = resolve_data_config(self.data, DEFAULT_DATA)
            bs = batch_settings(cfg)
            if bs["seq_len"] > max_len:
                logger.info("pico %s: data.seq_len=%d capped at max_seq_len=%d", run.run_name, bs["seq_len"], max_len)
                bs["seq_len"] = int(max_len)
            corpus = load_corpus(cfg)
            blocks = token_blocks(tokenizer, corpus.texts, bs["seq_len"])
            seed = int(cfg.get("seed", 0) or 0)
            self._batches[run.run_name] = {
                split: fixed_batches(blocks, bs["n_batches"], bs["batch_size"], seed, split,
                                     dataset_id=corpus.dataset_id, val_fraction=bs["val_fraction"])
                for split in ("val", "train")
            }
        return self._batches[run.run_name]

    def history(self, model_id: str):
        """Pico's evaluation log: ``step``, ``loss`` (= ln of the first task's perplexity, a
        validation loss), ``perplexity``, ``eval_task``, ``learning_rate``, ``tokens_seen``."""
        import pandas as pd

        run = self.run(model_id)
        rows = []
        for step in run.steps():
            try:
                res = run.eval_results(step)
            except (FileNotFoundError, RuntimeError) as e:
                logger.debug("%s: %s", model_id, e)
                continue
            if not res:
                continue
            task, ppl = next(iter(res.items()))
            rows.append({"step": step, "loss": math.log(ppl), "perplexity": ppl, "eval_task": task,
                         "learning_rate": learning_rate(step, run.config),
                         "tokens_seen": step * run.tokens_per_step()})
        return pd.DataFrame(rows) if rows else None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "runs": [r.describe() for r in self.runs.values()],
                "normalise_gradients": self.normalise_gradients}
