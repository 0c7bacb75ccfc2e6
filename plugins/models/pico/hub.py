"""Pico checkpoints on the Hugging Face Hub: steps from commit titles, minimal downloads.

pico-train pushes every save event as one commit on the branch ``pico-decoder-{size}-1`` of
``pico-lm/pico-decoder-{size}`` (no per-step branches); titles are exact strings such as
``Saving HF Model -- Step 1000`` and ``Saving Learning Dynamics Data (val) -- Step 1000``.
At the ``(val)`` commit of step N the repo root holds the step-N model and both splits of the
step-N learning dynamics, so that commit is the revision of step N (the model commit when a
step has no dynamics). Only the files a step needs are downloaded (``allow_patterns``): never
``fabric_state/`` (GBs of optimizer shards) nor ``train_data/``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness_plugins.models.pico.run import PicoRun, merged_config, read_eval, read_yaml

logger = logging.getLogger(__name__)

_TITLE = re.compile(
    r"^Saving (?:(?P<model>HF Model)|Learning Dynamics Data \((?P<split>train|val)\)"
    r"|(?P<eval>Evaluation Results)) -- Step (?P<step>\d+)\s*$"
)

#: files of one step's model (tokenizer files were pushed at step 0 and stay in the tree)
MODEL_PATTERNS = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "training_config.yaml"]


def hub_unreachable(repo_id: str, exc: Exception) -> Exception:
    """An offline or unreachable Hub becomes one line naming the offline variant (a
    `ConfigError`, printed without a traceback); any other failure is returned unchanged."""
    import os

    from harness.api import ConfigError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    names = {c.__name__ for c in type(exc).__mro__}
    if offline or names & {"OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout", "Timeout"}:
        why = "HF_HUB_OFFLINE is set" if offline else f"the Hub is unreachable ({type(exc).__name__})"
        return ConfigError(
            f"model.source=hub needs the Hugging Face Hub to list {repo_id}, but {why}. "
            "Offline variant: model.source=local model.size=null (builds or reuses the pico_mini suite), "
            "e.g. python -m harness experiment=pico_transport model.source=local model.size=null")
    return exc


def published_config(size: str) -> dict[str, Any]:
    """What the published runs used: 16 GPUs, LD sub-batch 256 (tiny) or 128, 1024 x 2048 tokens."""
    return {
        "training": {"fabric": {"num_nodes": 4, "num_devices": 4}},
        "checkpointing": {"learning_dynamics": {"batch_size": 256 if size == "tiny" else 128}},
    }


@dataclass
class StepCommits:
    """The commits of one step: model, each learning-dynamics split, evaluation results."""

    step: int
    model: str | None = None
    train: str | None = None
    val: str | None = None
    eval: str | None = None

    @property
    def revision(self) -> str | None:
        """The commit holding the step-N model and all of its dynamics."""
        return self.val or self.train or self.model


def parse_commit_titles(commits: Iterable[tuple[str, str]]) -> dict[int, StepCommits]:
    """``[(sha, title), ...]`` newest first (as ``list_repo_commits`` returns them) -> steps.

    Steps without a model commit are dropped. When a title repeats (a resumed run), the newest
    commit wins. Other titles (tokenizer, config, fabric, squash commits) are ignored.
    """
    steps: dict[int, StepCommits] = {}
    for sha, title in commits:
        m = _TITLE.match(title.strip())
        if not m:
            continue
        sc = steps.setdefault(int(m.group("step")), StepCommits(int(m.group("step"))))
        slot = "model" if m.group("model") else ("eval" if m.group("eval") else m.group("split"))
        if getattr(sc, slot) is None:  # newest first: keep the first seen
            setattr(sc, slot, sha)
    return {s: c for s, c in sorted(steps.items()) if c.model is not None}


class HubRun(PicoRun):
    """A Pico run on the Hub; files land in the Hugging Face cache (or ``cache_dir``)."""

    def __init__(self, size: str, *, repo_id: str | None = None, branch: str | None = None,
                 cache_dir: str | Path | None = None, token: str | None = None):
        self.repo_id = repo_id or f"pico-lm/pico-decoder-{size}"
        self.branch = branch or f"pico-decoder-{size}-1"
        super().__init__(Path(cache_dir or "."), size=size, run_name=self.branch)
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.token = token
        self._commits: dict[int, StepCommits] | None = None

    def commits(self) -> dict[int, StepCommits]:
        if self._commits is None:
            from huggingface_hub import HfApi

            try:
                listing = HfApi(token=self.token).list_repo_commits(self.repo_id, revision=self.branch)
            except Exception as exc:
                raise hub_unreachable(self.repo_id, exc) from None
            self._commits = parse_commit_titles((c.commit_id, c.title) for c in listing)
            if not self._commits:
                raise RuntimeError(f"{self.repo_id}@{self.branch}: no 'Saving HF Model -- Step N' commits")
        return self._commits

    def _download(self, revision: str, patterns: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(self.repo_id, revision=revision, allow_patterns=patterns,
                                      cache_dir=self.cache_dir, token=self.token))

    def _revision(self, step: int) -> str:
        sc = self.commits().get(int(step))
        if sc is None or sc.revision is None:
            raise FileNotFoundError(f"{self.repo_id}@{self.branch}: no commit for step {step}")
        return sc.revision

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            first = self.commits()[min(self.commits())]
            path = self._download(first.revision or first.model or self.branch, ["training_config.yaml"])
            cfg = path / "training_config.yaml"
            if cfg.is_file():
                self._config = merged_config(read_yaml(cfg))
            else:  # the published suite's settings (research note 1.3, 1.6)
                logger.warning("%s: no training_config.yaml; using the published Pico settings", self.repo_id)
                self._config = merged_config(published_config(self.size))
        return self._config

    def steps(self) -> list[int]:
        return sorted(self.commits())

    def step_dir(self, step: int) -> Path:
        return self._download(self._revision(step), MODEL_PATTERNS)

    def dynamics_dir(self, step: int, split: str | None = None) -> Path:
        splits = [split] if split else ["train", "val"]
        pats = [f"learning_dynamics/{s}_*.pt" for s in splits]
        return self._download(self._revision(step), pats) / "learning_dynamics"

    def eval_results(self, step: int) -> dict[str, float]:
        path = self._download(self._revision(step), [f"eval_results/step_{int(step)}.json"])
        return read_eval(path / "eval_results" / f"step_{int(step)}.json")

    def describe(self) -> dict[str, Any]:
        return {"source": "hub", "repo_id": self.repo_id, "branch": self.branch}
