"""On-disk cache of top Hessian eigenvectors, one checkpoint per file pair, so the pair scope
(subspace overlap) never recomputes what the checkpoint scope found.

Layout under a directory the metric gets from ``ctx.artifact_dir(...)``::

    step000001000.npy    float32 (P, k) eigenvectors, columns by descending eigenvalue
    step000001000.json   eigenvalues, residuals, the objective's description, fingerprint

Example::

    save(directory, 1000, vectors, {"eigenvalues": [...]})
    vectors, meta = load(directory, 1000)     # None when absent
    steps(directory)                           # [0, 1000]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import atomic_path, atomic_write


def _stem(step: int) -> str:
    return f"step{int(step):09d}"


def save(directory: Path, step: int, vectors: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write vectors (as float32) and meta atomically (temp file + rename); return the npy path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_stem(step)}.npy"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
    atomic_write(directory / f"{_stem(step)}.json", json.dumps({**meta, "step": int(step)}, sort_keys=True))
    return path


def load(directory: Path, step: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    npy, js = directory / f"{_stem(step)}.npy", directory / f"{_stem(step)}.json"
    if not (npy.exists() and js.exists()):
        return None
    return np.load(npy, allow_pickle=False), json.loads(js.read_text())


def steps(directory: Path) -> list[int]:
    """Steps with a complete cache entry, ascending."""
    if not directory.exists():
        return []
    out = []
    for js in directory.glob("step*.json"):
        if js.with_suffix(".npy").exists():
            out.append(int(js.stem[4:]))
    return sorted(out)
