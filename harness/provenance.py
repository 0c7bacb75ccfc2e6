"""Provenance: config hashes, git state, package versions, host and device facts.

Hashes are sha256 over canonical JSON (sorted keys) of the resolved config node, excluding
paths and run-local settings, so the same settings give the same hash in every run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: keys that never change results and so never enter a config hash
NON_SEMANTIC_KEYS = frozenset(
    {"root", "workdir", "cache_dir", "results_dir", "run_name", "progress", "output_dir", "num_workers"}
)

TRACKED_PACKAGES = (
    "harness",
    "torch",
    "transformers",
    "safetensors",
    "numpy",
    "scipy",
    "pandas",
    "hydra-core",
    "omegaconf",
    "lm-eval",
)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in NON_SEMANTIC_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_strip(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: what config hashes are taken over."""
    return json.dumps(_strip(obj), sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a (plain, resolved) config mapping."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def stable_id(*parts: Any, length: int = 16) -> str:
    """Deterministic id over identity parts (None and '' are distinct from each other)."""
    payload = json.dumps([p for p in parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


@functools.cache
def git_state(path: str | None = None) -> tuple[str | None, bool | None]:
    """(sha, dirty) of the git checkout holding the harness sources, if any."""
    where = path or str(Path(__file__).resolve().parent.parent)
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the numbers depend on."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def host_facts() -> dict[str, Any]:
    """Host name, platform, CPU count, torch threads and CUDA devices, for the manifest."""
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        facts["torch_threads"] = torch.get_num_threads()
        facts["cuda"] = torch.cuda.is_available()
        if facts["cuda"]:
            facts["cuda_device"] = torch.cuda.get_device_name(0)
    return facts


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where the platform does not say)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):
        return None
