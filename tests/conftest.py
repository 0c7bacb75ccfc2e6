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
#: under pytest-xdist (``-n``, the default in pyproject) each worker gets one core's share: one
#: torch thread, inherited by the subprocesses tests start (two workers with two threads each on
#: two cores oversubscribe them, and torch's spin-waiting pool then runs 8-40x slower)
XDIST = "PYTEST_XDIST_WORKER" in os.environ
if XDIST:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one cache for the whole session, shared by the xdist workers (builds are atomic and a
    # built suite is reused, as for one process)
    base = tmp_path_factory.getbasetemp()
    base = base.parent if XDIST else base
    cache, hf_home = base / "harness-cache", base / "hf-home"
    cache.mkdir(exist_ok=True)
    hf_home.mkdir(exist_ok=True)
    os.environ["HARNESS_CACHE"] = str(cache)
    os.environ.setdefault("HF_HOME", str(hf_home))
    return cache


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    try:
        import torch

        torch.set_num_threads(1 if XDIST else 2)
    except ImportError:  # pragma: no cover
        pass


def run_harness(*overrides: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 300, module: str = "harness") -> subprocess.CompletedProcess:
    """Run ``python -m harness`` (or another module) in a subprocess, as a user would."""
    full_env = {**os.environ, "CI": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def relation_observables(report: Path) -> set[str]:
    """Observable labels of every relation table a report wrote (one csv per level)."""
    import pandas as pd

    seen: set[str] = set()
    for csv in sorted(Path(report).glob("relation*.csv")):
        try:
            t = pd.read_csv(csv)
        except pd.errors.EmptyDataError:
            continue
        if "observable" in t:
            seen |= set(t["observable"].dropna().astype(str))
    return seen


TINY_TOY = ("model.steps=60", "model.n_checkpoints=6", "model.batch_size=128", "model.eval_batches=1",
            "print_config=false")

#: the outside-plugin fixture's own tests run in its own environment (tests/test_outside_plugin.py)
collect_ignore = ["fixtures"]


#: modules that take longest (real Ray cluster, concurrent launcher jobs, SIGKILL-and-resume, pip
#: installs): collected first, so xdist starts them first instead of leaving them as the tail
LONG_MODULES = ("test_ray_cluster.py", "test_launchers.py", "test_fault_tolerance.py", "test_scaffold.py",
                "test_robustness_core.py", "test_preset_transport.py", "test_preset_zsl.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first (stable otherwise): the same order on every xdist worker."""
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
