"""The Pythia model family: EleutherAI's public suite on the Hub, a local copy in the Hub's
layout, or the locally built ``pythia_mini`` suite.

    python -m harness model=pythia model.size=160m model.deduped=true checkpoints=log_spaced metric=loss
    python -m harness model=pythia model.source=local model.root=/data/pythia metric=loss
    python -m harness model=pythia model.source=mini metric=loss          # offline: builds the mini suite
    python -m harness model=pythia model.source=published metric=time_scaling   # offline, no weights

Published scores (`published`): checkpoints of the standard ``EleutherAI/pythia-<size>`` models
whose step has numbers in the lm-eval results EleutherAI published get them joined as
performance records with metric ``published`` (``model.published.join=false`` turns it off).
``source=published`` serves exactly those published steps as weightless checkpoints.

One code path: a source (`source.HubSource` / `source.LocalSource`) resolves a checkpoint to
local files (config, safetensors, tokenizer); the model is built with the transformers GPT-NeoX
classes (never remote code), the headers are validated, the weights hashed, and a
`PythiaCheckpoint` offers loss, evaluation batches and the streamed fields.

Integrity: every loaded checkpoint's weights hash is put in ``ref.meta["weights_sha"]`` (the
records' ``weights_sha`` column) and remembered; identical weights under two revisions of one
run are logged as warnings and listed in `describe` (``duplicate_weights``), as are revisions a
built suite promised but lacks (``missing_revisions``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api import CheckpointRef, ModelFamily, ParameterError, check_choice
from harness.params import Params, param

from . import schedule as S

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .checkpoint import PythiaCheckpoint

logger = logging.getLogger(__name__)

SOURCES = ("hub", "local", "mini", "published")
DTYPES = ("float32", "float16", "bfloat16")
#: the data a Pythia checkpoint is evaluated on unless ``data=`` names another preset
DEFAULT_DATA = {"name": "pydoc"}
_PUBLIC = re.compile(r"^EleutherAI/pythia-(?P<size>[0-9.]+[mb])(?P<dedup>-deduped)?$")


def _revisions(value: Any) -> list[int] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, int)) else list(value)
    return sorted({_step_of(r) for r in items})


def _modules(value: Any) -> Any:
    if isinstance(value, str):
        from .modules import KINDS

        if value not in KINDS and not any(c in value for c in "*?[."):
            raise ValueError("modules")
        return value
    return [str(v) for v in value]


def _step_of(r: int | str) -> int:
    m = re.fullmatch(r"(?:step)?(\d+)", str(r).strip())
    if not m:
        raise ParameterError("revisions", r, "steps as integers or 'stepN'")
    return int(m[1])


class PythiaFamily(ModelFamily):
    """Pythia (GPT-NeoX) checkpoints: Hub revisions ``stepN``, a local mirror, or the mini suite."""

    name = "pythia"

    class Params(Params):
        size: list[str] | None = param(None, "hub: 14m|31m|70m|160m|410m|1b|1.4b|2.8b|6.9b|12b or a list (null = "
                                       "160m); local/mini: filter (null = all)")
        deduped: bool = param(False, "hub: the -deduped variants (not for 14m/31m)")
        source: str = param("hub", "hub | local | mini | published (the published scores only, no weights)",
                            choices=SOURCES)
        root: str | None = param(None, "source=local: directory holding <model_id>/step<N>/ (config.json, "
                                 "model.safetensors, tokenizer)")
        models: list[str] | None = param(None, "local/mini: model ids (glob patterns) to keep; null = every model "
                                         "found under root")
        revisions: list[int] | None = param(None, "restrict to these steps (ints or \"stepN\"); null = all; then "
                                            "`checkpoints=` selects", convert=_revisions,
                                            allowed="null or steps as integers or 'stepN'")
        dtype: str = param("float32", "float32 | float16 | bfloat16 (model weights as loaded)", choices=DTYPES)
        device: str = param("cpu", "cpu | cuda")
        modules: Any = param("pico", "default tensor set of the delta/gradient/weights fields: pico | matrices | "
                             "all | a list of glob patterns", convert=_modules,
                             allowed="pico, matrices, all, or a list of glob patterns")
        probe_batch_size: int = param(8, "sequences (data.seq_len tokens) in the gradient probe batch of Hub "
                                      "checkpoints", ge=1)
        verify_hash: bool = param(True, "local: sha256 of the weights (duplicate-revision check); hub uses the "
                                  "Hub's LFS sha256")
        hf_cache_dir: str | None = param(None, "Hugging Face cache (null = HF_HOME's)")
        mini: dict[str, Any] = param({"sizes": ["xs", "s", "m", "l"], "steps": 1500, "checkpoint_every": 250},
                                     "source=mini: parameters of `python -m harness.build suite=pythia_mini`",
                                     convert=lambda v: {} if v is None else v)
        published: dict[str, Any] = param(
            {"join": True, "tasks": ["lambada_openai", "piqa", "winogrande", "wsc", "arc_easy", "arc_challenge",
                                     "sciq", "logiqa"], "primary": "lambada_openai/acc"},
            "EleutherAI's published zero-shot lm-eval scores: join (to standard checkpoints at published steps), "
            "tasks (list, globs or all), primary (task/metric the leaderboard ranks by)",
            convert=lambda v: {} if v is None else v)

        def check(self) -> None:
            """Hub sizes exist (and have -deduped variants when asked); a local root exists;
            published scores exist only for the standard models."""
            if self.source == "published":
                from . import published as P

                for s in self.size or list(P.SIZES):
                    check_choice("size", s, list(P.SIZES))
                if self.deduped:
                    raise ParameterError("deduped", self.deduped, "false with source=published (only the standard "
                                         "models' scores are published)")
            if self.source == "hub":
                for s in self.size or ["160m"]:
                    check_choice("size", s, list(S.SIZES))
                    if self.deduped and not S.SIZES[s].deduped:
                        raise ParameterError("deduped", self.deduped, f"false for size {s} (no -deduped variant)")
            if self.source == "local" and (not self.root or not Path(str(self.root)).expanduser().is_dir()):
                raise ParameterError("root", self.root, "an existing directory (required with source=local)")

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.source_kind = self.source
        self.sizes = (self.size or ["160m"]) if self.source == "hub" else self.size
        if self.source == "published":
            from . import published as P

            self.sizes = self.size or list(P.SIZES)
            self.has_weights = False  # the published numbers only: checkpoint metrics are skipped
        self.published = self._published_params(self.published)
        self.root = Path(str(self.root)).expanduser() if self.root else None
        self.models = self.models or None
        self.mini = dict(self.mini)
        self._source: Any = None
        self._last_loaded: dict[str, CheckpointRef] = {}
        self._hashes: dict[str, dict[int, str]] = {}
        self.duplicates: list[dict[str, Any]] = []
        self.missing: dict[str, list[int]] = {}
        self._data_cache: dict[str, dict[str, Any]] = {}
        self._tokenizers: dict[str, Any] = {}
        self._tok_keys: dict[str, str] = {}

    @staticmethod
    def _published_params(published: Mapping[str, Any] | None) -> dict[str, Any]:
        from . import published as P

        cfg = {"join": True, "tasks": list(P.DEFAULT_TASKS), "primary": P.DEFAULT_PRIMARY, **dict(published or {})}
        unknown = sorted(set(cfg) - {"join", "tasks", "primary"})
        if unknown:
            raise ParameterError(f"published.{unknown[0]}", cfg[unknown[0]], "one of the keys join, tasks, primary")
        tasks = cfg["tasks"]
        if tasks != "all" and (isinstance(tasks, str) or not tasks):
            tasks = [tasks] if isinstance(tasks, str) and tasks else None
            if not tasks:
                raise ParameterError("published.tasks", cfg["tasks"], "a list of task names/globs or 'all'")
        cfg["tasks"] = tasks if tasks == "all" else list(tasks)
        cfg["join"] = bool(cfg["join"])
        return cfg

    def scores(self, refs: Sequence[CheckpointRef]):
        """The published zero-shot scores of these refs (see the module docstring), or None."""
        from . import published as P

        if self.source_kind != "published" and not self.published["join"]:
            return None
        series_of = ({r.model_id: P.series_model(r.size)[0] for r in refs}
                     if self.source_kind == "published" else None)
        return P.score_table(refs, tasks=self.published["tasks"], primary=self.published["primary"],
                             series_of=series_of)

    # -- sources --------------------------------------------------------------------------
    def prepare(self) -> None:
        """Build (or reuse) the mini suite for ``source=mini``; otherwise nothing."""
        self._get_source()

    def _get_source(self):
        if self._source is not None:
            return self._source
        if self.source_kind == "published":
            return None
        from .source import HubSource, LocalSource

        if self.source_kind == "hub":
            self._source = HubSource(self.hf_cache_dir)
        elif self.source_kind == "local":
            self._source = LocalSource(self.root)
        else:
            from .build import build

            params = dict(self.mini)
            if self.cache_root is not None:  # where `python -m harness.build suite=pythia_mini` builds
                params.setdefault("cache_dir", str(self.cache_root))
            self.root = build(**params)
            self._source = LocalSource(self.root)
        return self._source

    # -- listing --------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointRef]:
        src = self._get_source()
        refs: list[CheckpointRef] = []
        if self.source_kind == "published":
            from . import published as P

            for size in self.sizes:
                name, variant = P.series_model(size)
                model_id = f"EleutherAI/{name}"
                for step in self._keep(P.published_steps(size)):
                    ref = self._ref(model_id, size, step, S.tokens_seen(step), S.learning_rate(size, step),
                                    S.n_params(size))
                    ref.meta["variant"] = variant
                    refs.append(ref)
            return refs
        if src.kind == "hub":
            for size in self.sizes:
                model_id = S.repo_id(size, self.deduped)
                for step in self._keep(S.steps()):
                    refs.append(self._ref(model_id, size, step, S.tokens_seen(step), S.learning_rate(size, step),
                                          S.n_params(size)))
            return refs
        present_sizes: set[str] = set()
        present_steps: set[int] = set()
        for model_id, steps in src.list_models().items():
            if self.models and not any(fnmatch.fnmatchcase(model_id, p) for p in self.models):
                continue
            info = self._model_info(model_id, steps)
            present_sizes.add(str(info["size"]))
            present_steps |= set(steps)
            if self.sizes and info["size"] not in self.sizes:
                continue
            # a step directory without config.json, or a revision the builder promised
            # (model_info.json) that is absent, is listed anyway: loading it fails with the
            # missing file named, so it becomes an `error` record and shows in the status table
            broken = set(src.broken_steps(model_id)) if hasattr(src, "broken_steps") else set()
            expected = info.get("steps")
            missing = sorted(set(self._keep(expected or [])) - set(steps)) if expected else []
            if missing:
                self.missing[model_id] = missing
                logger.warning("%s: %d promised revisions are missing or incomplete (error records): %s", model_id,
                               len(missing), ", ".join(f"step{s}" for s in missing[:10]))
            broken |= set(missing)
            if broken - set(missing):
                logger.warning("%s: step directories without config.json (error records): %s", model_id,
                               ", ".join(f"step{s}" for s in sorted(broken - set(missing))[:10]))
            steps = sorted(set(steps) | broken)
            for step in self._keep(steps):
                tps = info.get("tokens_per_step")
                refs.append(self._ref(model_id, info["size"], step, step * tps if tps else None,
                                      info["lr_fn"](step) if info.get("lr_fn") else None, info.get("n_params")))
        self._check_present(present_sizes, present_steps)
        return refs

    def _check_present(self, sizes: set[str], steps: set[int]) -> None:
        """A requested size or revision the local suite does not hold is an error listing what it holds."""
        where = f"under {self.root}" if self.root else "in the suite"
        absent = [s for s in (self.sizes or []) if str(s) not in sizes]
        if absent:
            raise ParameterError("size", absent, f"sizes present {where}: {', '.join(sorted(sizes)) or 'none'}")
        if self.revisions is not None:
            missing = sorted(set(self.revisions) - steps)
            if missing:
                raise ParameterError("revisions", missing,
                                     f"steps present {where}: {', '.join(map(str, sorted(steps))) or 'none'}")

    def _keep(self, steps: Iterable[int]) -> list[int]:
        return [s for s in steps if self.revisions is None or s in self.revisions]

    def _ref(self, model_id, size, step, tokens, lr, n_params) -> CheckpointRef:
        return CheckpointRef(family=self.name, model_id=model_id, size=size, step=step, tokens_seen=tokens,
                             learning_rate=lr, revision=f"step{step}", n_params=n_params,
                             meta={"source": self.source_kind})

    def _model_info(self, model_id: str, steps: list[int]) -> dict[str, Any]:
        """Size, schedule and parameter count of a local run: its ``model_info.json`` (written
        by the builder), the public schedule for a mirror of ``EleutherAI/pythia-*``, or the
        weights header alone."""
        path = self.root / model_id / "model_info.json"
        if path.is_file():
            info = json.loads(path.read_text())
            lr_keys = ("lr", "warmup_steps", "total_steps")
            if all(k in info for k in lr_keys):
                info["lr_fn"] = lambda s, i=info: S.lr_at(s, i["lr"], i["total_steps"], i["warmup_steps"],
                                                            i.get("min_lr_ratio", S.MIN_LR_RATIO))
            return info
        m = _PUBLIC.match(model_id)
        if m and m["size"] in S.SIZES:
            size = m["size"]
            return {"size": size, "tokens_per_step": S.TOKENS_PER_STEP, "n_params": S.n_params(size),
                    "lr_fn": lambda s, z=size: S.learning_rate(z, s)}
        n_params = None
        try:
            from harness.weights import WeightFiles

            n_params = WeightFiles.open(self._source.weight_files(model_id, steps[-1])).n_params()
        except Exception as e:  # noqa: BLE001 (listing must not fail on one broken file)
            logger.warning("%s: cannot read parameter count: %s", model_id, e)
        return {"size": Path(model_id).name, "n_params": n_params}

    # -- loading --------------------------------------------------------------------------
    def load(self, ref: CheckpointRef) -> PythiaCheckpoint:
        """Load one checkpoint; raises `CheckpointFileError` (naming file and cause) on a missing
        revision, a truncated/corrupt file or weights that do not fit the config."""
        if self.source_kind == "published":
            from harness.api import HarnessError

            raise HarnessError(f"pythia source=published has no weights ({ref.model_id} {ref.label}): "
                               "only the published scores; use source=hub or local for checkpoint metrics")
        import torch

        from .checkpoint import PythiaCheckpoint, read_probe
        from .source import PROBE_GRADIENTS, PROBE_JSON
        from harness.weights import CheckpointFileError, WeightFiles

        src = self._get_source()
        model_dir = src.model_dir(ref.model_id, ref.step)
        files = src.weight_files(ref.model_id, ref.step)
        weights = WeightFiles.open(files)  # validates every header against the file size
        sha = src.weights_sha(files) or (weights.sha256() if self.verify_hash else None)
        if sha:
            self._note_hash(ref, sha)

        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        try:
            config = GPTNeoXConfig.from_pretrained(str(model_dir))
        except Exception as e:
            raise CheckpointFileError(f"{model_dir / 'config.json'}: not a usable GPT-NeoX config ({e})") from e
        if getattr(config, "model_type", None) != "gpt_neox":
            raise CheckpointFileError(f"{model_dir / 'config.json'}: model_type {config.model_type!r}, not gpt_neox")
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one bar per checkpoint would drown the runner's progress
        try:
            model = GPTNeoXForCausalLM.from_pretrained(
                str(files[0].parent), config=config, dtype=getattr(torch, self.dtype))
        except Exception as e:
            raise CheckpointFileError(f"{files[0]}: weights do not load into the GPT-NeoX model ({e})") from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()

        tokenizer = self._tokenizer(ref.model_id, model_dir)
        data = (self._data(tokenizer, self._tok_keys[ref.model_id], int(config.max_position_embeddings))
                if tokenizer is not None else {})
        probe = data.get("probe")
        stored = src.optional_file(ref.model_id, ref.step, PROBE_GRADIENTS)
        if stored is not None:
            probe_json = src.optional_file(ref.model_id, ref.step, PROBE_JSON)
            probe = read_probe(probe_json) if probe_json else probe
        previous = self._last_loaded.get(ref.model_id)
        if previous is not None and previous.step >= ref.step:
            previous = None
        ckpt = PythiaCheckpoint(
            ref, model,
            weights=weights,
            previous_weights=lambda p: WeightFiles.open(src.weight_files(p.model_id, p.step)),
            previous=previous,
            probe=probe,
            stored_gradients=stored,
            default_modules=self.modules,
            splits=data.get("splits"),
            data_source=data.get("fingerprint", ""),
            tokenizer=tokenizer,
            device=self.device,
        )
        self._last_loaded[ref.model_id] = ref
        return ckpt

    def _note_hash(self, ref: CheckpointRef, sha: str) -> None:
        if isinstance(ref.meta, dict):
            ref.meta["weights_sha"] = sha  # NOTE: meta is excluded from ref identity; the runner reads it
        seen = self._hashes.setdefault(ref.model_id, {})
        for step, other in seen.items():
            if other == sha and step != ref.step:
                dup = {"model_id": ref.model_id, "steps": sorted((step, ref.step)), "weights_sha": sha}
                if isinstance(ref.meta, dict):  # the runner copies it into every record's `warning`
                    ref.meta["warning"] = f"identical weights to step{step} (sha256 {sha[:12]}...)"
                if dup not in self.duplicates:
                    self.duplicates.append(dup)
                    logger.warning("%s: step%d and step%d hold identical weights (sha256 %s...)",
                                   ref.model_id, step, ref.step, sha[:12])
        seen[ref.step] = sha

    def _tokenizer(self, model_id: str, model_dir: Path):
        if model_id in self._tokenizers:
            return self._tokenizers[model_id]
        tok = None
        if (model_dir / "tokenizer.json").is_file():
            import hashlib

            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(model_dir))
            # identity of the vocabulary: every revision (and size) sharing it shares the batches
            self._tok_keys[model_id] = hashlib.sha256((model_dir / "tokenizer.json").read_bytes()).hexdigest()[:16]
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        else:
            logger.warning("%s: no tokenizer.json beside the weights: no evaluation batches", model_dir)
        self._tokenizers[model_id] = tok
        return tok

    def _data(self, tokenizer, tok_key: str, max_positions: int) -> dict[str, Any]:
        """Evaluation splits and the gradient probe, tokenised once per tokenizer."""
        from harness.data import batch_settings, fixed_batches, load_corpus, resolve_data_config, token_blocks

        cfg = resolve_data_config(self.data, DEFAULT_DATA)
        key = json.dumps({"cfg": cfg, "tokenizer": tok_key, "probe": self.probe_batch_size, "max": max_positions},
                         sort_keys=True, default=str)
        if key in self._data_cache:
            return self._data_cache[key]
        bs = batch_settings(cfg)
        if bs["seq_len"] > max_positions:
            raise ParameterError("data.seq_len", bs["seq_len"], f"<= {max_positions} (the model's context)")
        seed = int(cfg.get("seed", 0) or 0)
        corpus = load_corpus(cfg)
        blocks = token_blocks(tokenizer, corpus.texts, bs["seq_len"])
        splits, fps = {}, []
        for split in ("val", "train"):
            fb = fixed_batches(blocks, bs["n_batches"], bs["batch_size"], seed, split,
                               dataset_id=corpus.dataset_id, val_fraction=bs["val_fraction"])
            splits[split] = fb.batches
            fps.append(fb.fingerprint)
        probe_fb = fixed_batches(blocks, 1, self.probe_batch_size, seed + 1, "val",
                                 dataset_id=corpus.dataset_id, val_fraction=bs["val_fraction"])
        probe = {"input_ids": probe_fb.batches[0], "meta": {
            "probe_fingerprint": probe_fb.fingerprint, "dataset_id": corpus.dataset_id, "split": "val",
            "example_ids": probe_fb.example_ids[0], "seq_len": probe_fb.seq_len}}
        out = {"splits": splits, "fingerprint": "+".join(fps), "probe": probe}
        self._data_cache[key] = out
        return out

    # -- run facts ------------------------------------------------------------------------
    def history(self, model_id: str) -> pd.DataFrame | None:
        """The training log of a built run (``train_log.jsonl``: step, loss, learning_rate,
        tokens_seen); None for Hub checkpoints (public Pythia ships no per-step log)."""
        if self.source_kind == "published":
            from . import published as P

            refs = [r for r in self.checkpoints() if r.model_id == model_id]
            if not refs:
                return None
            log = P.history(P.series_model(refs[0].size)[0], self.published["tasks"])
            log["tokens_seen"] = [S.tokens_seen(s) for s in log["step"]]
            log["learning_rate"] = [S.learning_rate(refs[0].size, s) for s in log["step"]]
            return log
        src = self._get_source()
        if src.kind == "hub":
            return None
        path = self.root / model_id / "train_log.jsonl"
        if not path.is_file():
            return None
        import pandas as pd

        return pd.read_json(path, lines=True)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source_kind,
            "root": str(self.root) if self.root else None,
            "sizes": self.sizes,
            "deduped": self.deduped,
            "weights_sha": {m: {f"step{s}": h for s, h in sorted(v.items())} for m, v in self._hashes.items()},
            "duplicate_weights": list(self.duplicates),
            "missing_revisions": {m: [f"step{s}" for s in v] for m, v in self.missing.items()},
            "published": {**self.published, **_published_describe()},
        }


def _published_describe() -> dict[str, Any]:
    from . import published as P

    return P.describe()
