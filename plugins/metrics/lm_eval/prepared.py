"""lm-eval over a trajectory: everything that does not depend on the weights is done once per run.

A sweep evaluates the same tasks on every checkpoint. ``simple_evaluate`` rebuilds all of it per
call: it loads the tasks, reads the documents, renders every prompt (jinja2 templates compiled
per document), builds the request objects, and the model wrapper tokenises every request again.
`PreparedTasks` does the weight-independent part once and each checkpoint only runs the forward
passes and lm-eval's own scoring::

    prepared = PreparedTasks(task_manager, ["pydoc_mc"], num_fewshot=None, limit=100)
    for model in checkpoints:                                   # same tokenizer
        lm = prepared.lm(model, tokenizer, batch_size=8)        # HFLM + the run's token cache
        results = prepared.evaluate(lm, bootstrap_iters=1000)   # == simple_evaluate(...) results

How it stays identical to ``simple_evaluate`` (asserted in tests/test_lm_eval.py):

* tasks are loaded and configured exactly as ``simple_evaluate`` does (num_fewshot override,
  few-shot seed), under the same global seeds, and their requests are built once with the same
  ``limit``;
* each checkpoint runs lm-eval's own ``evaluator.evaluate`` on those tasks: the request objects
  are reset (``resps``/``filtered_resps`` emptied) and their rebuild is skipped, so filtering,
  ``process_results``, aggregation and bootstrap stderr are lm-eval's code, under the seeds
  ``simple_evaluate`` sets before it;
* tokenisation goes through `HFLM.tok_encode` with a cache keyed by the tokenizer's content
  fingerprint, its BOS settings and the call's arguments, so a different tokenizer (another
  model family in the same sweep) never reuses another's token ids.

What is not repeated: lm-eval's ``add_env_info`` (torch's ``collect_env`` plus a ``git describe``
shell-out that prints "fatal: not a git repository" outside a repository) and the git hash; the
run's manifest already records the environment and versions.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

#: the seeds simple_evaluate sets (lm_eval.defaults: random 0, numpy/torch/few-shot 1234)
RANDOM_SEED, OTHER_SEED = 0, 1234

_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Content hash of a transformers tokenizer (vocabulary, merges, normaliser, special tokens).

    Computed once per tokenizer object; two objects loaded from the same files get the same
    fingerprint, so every checkpoint of a run (and every size of a suite sharing a tokenizer)
    shares one token cache.
    """
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary is its identity
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())).encode())
    h.update(repr((getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None),
                   tokenizer.padding_side, tokenizer.truncation_side)).encode())
    fp = h.hexdigest()[:16]
    try:
        _FINGERPRINTS[tokenizer] = fp
    except TypeError:  # not weak-referenceable: recomputed next time
        pass
    return fp


@lru_cache(maxsize=1)
def cached_hflm_class() -> type:
    """``HFLM`` whose ``tok_encode`` reads a shared ``{key: token ids}`` cache (built lazily so
    importing this module does not import lm-eval)."""
    from lm_eval.models.huggingface import HFLM

    class CachedTokensHFLM(HFLM):
        """HFLM that tokenises each distinct string once per run and tokenizer (see module doc)."""

        def __init__(self, *args: Any, token_cache: dict | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._token_cache = token_cache if token_cache is not None else {}
            self._token_key = (tokenizer_fingerprint(self.tokenizer), self.add_bos_token, self.backend,
                               self.prefix_token_id)

        def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                       left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
            key = (self._token_key, string, add_special_tokens, left_truncate_len, tuple(sorted(kwargs.items())))
            ids = self._token_cache.get(key)
            if ids is None:
                ids = super().tok_encode(string, add_special_tokens=add_special_tokens,
                                         left_truncate_len=left_truncate_len, **kwargs)
                self._token_cache[key] = ids
            return list(ids)  # a private list: callers may slice or extend it

    return CachedTokensHFLM


def _seed_like_simple_evaluate() -> None:
    import random

    import numpy as np
    from lm_eval.utils import set_torch_seed

    random.seed(RANDOM_SEED)
    np.random.seed(OTHER_SEED)
    set_torch_seed(OTHER_SEED)


class PreparedTasks:
    """lm-eval tasks with their documents and requests built once (see the module docstring).

    Not thread-safe across concurrent evaluations of the same object (the request objects hold
    one checkpoint's responses at a time): `evaluate` takes a lock.
    """

    def __init__(self, task_manager: Any, tasks: Sequence[str], *, num_fewshot: int | None,
                 limit: int | float | None):
        from lm_eval.evaluator_utils import get_sample_size

        t0 = time.perf_counter()
        self.tasks = list(tasks)
        self.limit = limit
        _seed_like_simple_evaluate()
        self.loaded = task_manager.load(self.tasks)
        for task_obj in self.loaded["tasks"].values():  # as simple_evaluate configures them
            if num_fewshot is not None:
                if task_obj.get_config("num_fewshot") != 0:  # a task pinned to 0 shots stays so
                    task_obj.set_config(key="num_fewshot", value=num_fewshot)
            elif task_obj.get_config("num_fewshot") is None:
                task_obj.set_config(key="num_fewshot", value=0)
            task_obj.set_fewshot_seed(seed=OTHER_SEED)
        self.n_requests = 0
        for task_obj in self.loaded["tasks"].values():
            task_obj.build_all_requests(limit=get_sample_size(task_obj, limit), rank=0, world_size=1)
            self.n_requests += len(task_obj.instances)
        self.token_cache: dict = {}
        self._lock = threading.Lock()
        self.prepare_s = time.perf_counter() - t0
        logger.info("lm-eval: built %d requests for %s once in %.1f s", self.n_requests, self.tasks, self.prepare_s)

    def lm(self, model: Any, tokenizer: Any, **hflm_kwargs: Any) -> Any:
        """An ``HFLM`` over the in-memory model that shares this run's token cache."""
        return cached_hflm_class()(pretrained=model, tokenizer=tokenizer, token_cache=self.token_cache, **hflm_kwargs)

    def evaluate(self, lm: Any, *, bootstrap_iters: int, log_samples: bool = False) -> dict[str, Any]:
        """lm-eval's ``evaluator.evaluate`` on the prepared requests: only forward passes and scoring."""
        import torch
        from lm_eval import evaluator

        # inference_mode: no autograd bookkeeping at all (HFLM itself uses no_grad); same numbers
        with self._lock, torch.inference_mode():
            tasks = self.loaded["tasks"].values()
            for task_obj in tasks:
                for inst in task_obj.instances:
                    inst.resps = []
                    inst.filtered_resps = {}
                # requests are already built with this limit; evaluate() must not rebuild them
                task_obj.build_all_requests = _keep_requests
            try:
                _seed_like_simple_evaluate()
                out = evaluator.evaluate(lm=lm, task_dict=self.loaded, limit=self.limit,
                                         bootstrap_iters=bootstrap_iters, log_samples=log_samples)
            finally:
                for task_obj in tasks:
                    del task_obj.build_all_requests  # back to the class's method
        if out is None:
            raise RuntimeError("lm-eval returned no results (non-primary rank?)")
        return out


def _keep_requests(**kwargs: Any) -> None:
    """Stands in for ``Task.build_all_requests`` during `PreparedTasks.evaluate`."""
    if kwargs.get("rank", 0) != 0 or kwargs.get("world_size", 1) != 1:
        raise RuntimeError("prepared lm-eval requests are built for one process (rank 0 of 1)")
