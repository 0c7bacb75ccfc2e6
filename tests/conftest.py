"""Shared test set-up: offline, small thread counts, a private cache, helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# No network at test time, ever; quiet progress bars; one cache per test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(cache)
    os.environ.setdefault("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    return cache


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover
        pass


def run_harness(*overrides: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 300, module: str = "harness") -> subprocess.CompletedProcess:
    """Run ``python -m harness`` (or another module) in a subprocess, as a user would."""
    full_env = {**os.environ, "CI": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


TINY_TOY = ("model.steps=60", "model.n_checkpoints=6", "model.batch_size=128", "model.eval_batches=1",
            "print_config=false")

#: the outside-plugin fixture's own tests run in its own environment (tests/test_outside_plugin.py)
collect_ignore = ["fixtures"]
