"""The ``lm_eval`` metric: EleutherAI lm-evaluation-harness on the checkpoint already in memory.

    python -m harness model=pythia metric=lm_eval metric.lm_eval.tasks=[lambada_openai,piqa]
    python -m harness model=pico metric=lm_eval             # offline pydoc_* tasks by default

One record per task x lm-eval metric: lm-eval's ``"acc,none"`` becomes measure ``acc`` with
task ``<task>`` (a filter other than ``none`` is appended: ``exact_match_strict_match``), with
stderr, n (effective samples) and higher_is_better taken from lm-eval's own output. The raw
results JSON is kept as an artifact next to the run.

Why it is fast: `HFLM` wraps the model object the runner already loaded (no second copy, no
download), and the `TaskManager` indexes only our offline task directory unless a requested
task is not in it; the ~6 s index of lm-eval's built-in tasks then happens at most once per
process (both managers are cached).
Over a trajectory, tasks, documents, prompts, requests and tokenisations are built once per run
(per tokenizer) and each further checkpoint only runs the forward passes and lm-eval's scoring,
with scores identical to ``simple_evaluate`` (`harness_plugins.metrics.lm_eval.prepared`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.api import CheckpointContext, ConfigError, Measurement, Metric, ParameterError
from harness.params import Params, param

logger = logging.getLogger(__name__)

DEFAULT_TASKS = ("pydoc_cloze", "pydoc_mc", "pydoc_ppl")
#: Pythia's published zero-shot suite (needs the Hub for data; see docs/lm_eval.md)
PYTHIA_TASKS = ("lambada_openai", "piqa", "winogrande", "arc_easy", "arc_challenge", "sciq", "logiqa", "wsc")

SKIP_NO_TOKENIZER = "checkpoint has no tokenizer: lm-eval scores text, so it needs one"
SKIP_NOT_HF = (
    "checkpoint model is not a transformers PreTrainedModel (lm-eval's HFLM needs one); "
    "families with a native module must expose a transformers-compatible causal LM"
)

_TM_LOCK = threading.Lock()
_TASK_MANAGERS: dict[tuple[tuple[str, ...], bool], Any] = {}


def task_manager(include_paths: Sequence[str], include_defaults: bool) -> Any:
    """A cached ``TaskManager``: built-in task definitions are indexed at most once per process."""
    key = (tuple(include_paths), include_defaults)
    with _TM_LOCK:
        if key not in _TASK_MANAGERS:
            from lm_eval.tasks import TaskManager

            t0 = time.perf_counter()
            _TASK_MANAGERS[key] = TaskManager(include_path=list(include_paths), include_defaults=include_defaults)
            logger.info("indexed lm-eval tasks (defaults=%s) in %.1f s", include_defaults, time.perf_counter() - t0)
        return _TASK_MANAGERS[key]


def manager_for(tasks: Sequence[str], include_paths: Sequence[str]) -> Any:
    """The cheapest manager that knows every task: our directories only, else also built-ins."""
    tm = task_manager(include_paths, include_defaults=False)
    known = set(tm.all_tasks) | set(tm.all_groups) | set(tm.all_tags)
    if all(t in known for t in tasks):
        return tm
    tm = task_manager(include_paths, include_defaults=True)
    known = set(tm.all_tasks) | set(tm.all_groups) | set(tm.all_tags)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        import difflib

        hints = {t: difflib.get_close_matches(t, sorted(known), n=3) for t in unknown}
        detail = "; ".join(f"{t!r}" + (f" (did you mean: {', '.join(h)}?)" if h else "") for t, h in hints.items())
        raise ValueError(f"unknown lm-eval task(s): {detail}")
    return tm


@contextlib.contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global RNG state afterwards.

    ``simple_evaluate`` reseeds all three (random 0, numpy/torch 1234) for its own
    reproducibility; without this, every metric that runs after it in the same process would
    see reseeded global generators.
    """
    import random

    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def split_key(key: str) -> tuple[str, str] | None:
    """``"acc,none"`` -> ``("acc", "none")``; stderr keys and non-metric keys -> None."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    if metric.endswith("_stderr"):
        return None
    return metric, filt


def measure_name(metric: str, filt: str) -> str:
    if filt in ("none", ""):
        return metric
    return f"{metric}_{re.sub(r'[^0-9a-zA-Z]+', '_', filt).strip('_')}"


def _float(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" for a missing stderr
    return f if math.isfinite(f) else None


def results_to_measurements(results: dict[str, Any], settings: dict[str, Any]) -> Iterator[Measurement]:
    """One Measurement per (task or group) x metric x filter in an lm-eval results dict."""
    table = {**results.get("results", {}), **results.get("groups", {})}
    hib = results.get("higher_is_better", {})
    n_samples = results.get("n-samples", {})
    n_shot = results.get("n-shot", {})
    versions = results.get("versions", {})
    for task in sorted(table):
        row = table[task]
        for key in sorted(row):
            parts = split_key(key)
            if parts is None:
                continue
            metric, filt = parts
            try:
                value = float(row[key])  # inf/nan kept: an honest result; the record gets a warning
            except (TypeError, ValueError):
                continue  # a non-numeric entry (e.g. "N/A") is not a score
            ns = n_samples.get(task, {})
            yield Measurement(
                measure_name(metric, filt),
                value,
                stderr=_float(row.get(f"{metric}_stderr,{filt}")),
                n=ns.get("effective"),
                higher_is_better=hib.get(task, {}).get(metric),
                task=task,
                extra={
                    "lm_eval_metric": metric,
                    "filter": filt,
                    "n_shot": n_shot.get(task),
                    "task_version": versions.get(task),
                    "n_original": ns.get("original"),
                    **settings,
                },
            )


def _tasks(value: Any) -> list[str]:
    tasks = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(t, str) and t for t in tasks):
        raise ValueError("tasks")
    return tasks


def _limit(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < math.inf:
        raise ValueError("limit")
    if float(value) >= 1:
        if float(value) != int(value):
            raise ValueError("limit")
        return int(value)
    return float(value)


def _batch_size(value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or float(value) != int(value):
        raise ValueError("batch_size")
    return int(value)


def _dirs(value: Any) -> list[str]:
    paths = [value] if isinstance(value, str) else list(value or [])
    for p in paths:
        if not Path(str(p)).expanduser().is_dir():
            raise ParameterError("include_path", p, "existing directories of lm-eval task YAML files")
    return [str(p) for p in paths]


INSTALL_HINT = "pip install -c constraints.txt -e '.[lm_eval]'  (lm-eval[hf], part of the base install)"


def require_lm_eval() -> None:
    """Fail at config time, before any model is built or trained, when lm-eval is missing (a venv
    made before it joined the base install): one line naming what to install."""
    import importlib.util

    from harness.api import ConfigError

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"metric lm_eval needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")


class LmEvalMetric(Metric):
    """Downstream scores with lm-evaluation-harness on the in-memory checkpoint (offline tasks by default)."""

    name = "lm_eval"
    version = "1"
    performance = {"*": "score"}  # every task score is a downstream performance measure

    class Params(Params):
        tasks: list[str] = param(list(DEFAULT_TASKS), "lm-eval task names (default: the offline tasks built from "
                                 "Python's documentation)", min_len=1, convert=_tasks,
                                 allowed="a non-empty list of lm-eval task names")
        num_fewshot: int | None = param(None, "few-shot examples; null = each task's default", ge=0)
        limit: Any = param(None, "documents per task: null = all, an int >= 1, or a fraction in (0, 1)",
                           convert=_limit, allowed="null, an integer >= 1 (documents) or a fraction in (0, 1)")
        batch_size: Any = param(8, "HFLM batch size, or \"auto\"", convert=_batch_size,
                                allowed="an integer >= 1 or auto")
        bootstrap_iters: int = param(1000, "stderr bootstrap for non-mean metrics (perplexity); 0 = none", ge=0)
        log_samples: bool = param(False, "per-sample outputs inside the raw results artifact (large)")
        include_path: list[str] = param([], "extra directories of lm-eval task YAMLs (searched before ours)",
                                        convert=_dirs, allowed="existing directories of lm-eval task YAML files")
        cache_dir: str | None = param(None, "where offline task data is built; null = $HARNESS_CACHE/lm_eval or "
                                      "~/.cache/harness/lm_eval")
        max_length: int | None = param(None, "context length override for HFLM; null = the model's own", ge=1)

    def __init__(self, **params: Any):
        require_lm_eval()
        super().__init__(**params)
        self.include_paths = [str(Path(p).expanduser().resolve()) for p in self.include_path]

    def prepare(self) -> None:
        """Check the task names once, before any checkpoint is loaded: a typo is a clear
        error with close matches, not an error record per checkpoint after a model load."""
        try:
            manager_for(self.tasks, self.include_paths_for_run())
        except ValueError as exc:
            raise ConfigError(f"metric.lm_eval.tasks: {exc}") from None

    # ---- helpers ------------------------------------------------------------------------
    def include_paths_for_run(self) -> list[str]:
        """User task dirs first, then our offline task dir (built on first use)."""
        from harness_plugins.metrics.lm_eval.data import ensure_task_dir

        ours = str(ensure_task_dir(Path(self.cache_dir).expanduser() if self.cache_dir else None))
        return [*self.include_paths, ours]

    def settings(self) -> dict[str, Any]:
        """What is recorded in every record's ``extra`` (and so visible in tables)."""
        import lm_eval

        return {
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "bootstrap_iters": self.bootstrap_iters,
            "lm_eval_version": getattr(lm_eval, "__version__", None),
        }

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """lm-eval on an in-memory model + tokenizer; returns lm-eval's results dict.

        Tasks, documents, prompts, requests and tokenisations are built once per run (per
        tokenizer) and reused by every checkpoint (`prepared.PreparedTasks`); the scores are
        those of ``simple_evaluate`` on the same model (asserted in tests/test_lm_eval.py).
        """
        from harness_plugins.metrics.lm_eval.prepared import PreparedTasks

        tm = manager_for(self.tasks, self.include_paths_for_run())
        kw: dict[str, Any] = {}
        if self.max_length is not None:
            kw["max_length"] = self.max_length
        with preserved_global_rng():
            cached = getattr(self, "_prepared", None)
            if cached is None or cached[0] is not tm:
                cached = self._prepared = (tm, PreparedTasks(tm, self.tasks, num_fewshot=self.num_fewshot,
                                                             limit=self.limit))
            prepared = cached[1]
            lm = prepared.lm(model, tokenizer, batch_size=self.batch_size, **kw)
            out = prepared.evaluate(lm, bootstrap_iters=self.bootstrap_iters, log_samples=self.log_samples)
        out["config"] = {"model": getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__),
                         **self.settings(), "tasks_prepared_once_s": round(prepared.prepare_s, 3)}
        return out

    # ---- the metric ---------------------------------------------------------------------
    def measure_checkpoint(self, ctx: CheckpointContext) -> Iterator[Measurement]:
        ckpt = ctx.checkpoint
        try:
            tokenizer = ckpt.tokenizer
        except NotImplementedError:
            tokenizer = None
        if tokenizer is None:
            yield Measurement.skipped("lm_eval", SKIP_NO_TOKENIZER)
            return
        try:
            model = ckpt.model
        except NotImplementedError:
            model = None
        from transformers import PreTrainedModel, PreTrainedTokenizerBase

        if not isinstance(model, PreTrainedModel):
            yield Measurement.skipped("lm_eval", SKIP_NOT_HF)
            return
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            yield Measurement.skipped("lm_eval", f"tokenizer is a {type(tokenizer).__name__}, not a transformers "
                                      "PreTrainedTokenizer(Fast) as lm-eval's HFLM requires")
            return
        t0 = time.perf_counter()
        results = self.evaluate(model, tokenizer)
        elapsed = time.perf_counter() - t0
        ref = ckpt.ref
        out_dir = ctx.artifact_dir(ref.model_id, ref.label)  # the runner roots it at the metric
        _write_json(results, out_dir / "results.json")
        settings = {**self.settings(), "eval_time_s": round(elapsed, 3)}
        measurements = list(results_to_measurements(results, settings))
        if not measurements:
            raise RuntimeError(f"lm-eval produced no scores for tasks {self.tasks}")
        yield from measurements


def _write_json(results: dict[str, Any], path: Path) -> None:
    from lm_eval.utils import handle_non_serializable

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True, default=handle_non_serializable), encoding="utf-8")
    tmp.replace(path)
