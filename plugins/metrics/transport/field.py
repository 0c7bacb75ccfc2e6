"""Turning a checkpoint's tensor field into probe load, and the null fields.

The field arrives one tensor at a time (``checkpoint.field(kind)``); each tensor is
normalised by its own scale (``x = |u| / s``, s = RMS or the robust median|u|/0.6745), an
optional stratified subsample keeps the same fraction of every tensor (so the ratio of
system sizes between model sizes is preserved), and only the normalised float32 values
are kept: one array of N entries, never the model.

Null fields (docs/transport.md, "Sources and the reconstruction") run through the identical pipeline:

* ``R1``: the entries of each tensor permuted (keeps the marginal, destroys arrangement);
* ``R2``: i.i.d. Gaussian at each tensor's RMS (destroys both).

Example::

    f = collect_field(ckpt.field("delta"), normalisation="rms", fraction=1.0, rng=rng)
    x_real, x_r1, x_r2 = f.values, f.permuted(rng), f.gaussian(rng)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CHANNELS = ("real", "R1", "R2")


def tensor_scale(u: np.ndarray, normalisation: str) -> float:
    """Scale of one tensor: RMS, or robust median|u|/0.6745 (falls back to RMS when 0)."""
    if u.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(u, dtype=np.float64))))
    if normalisation == "robust":
        robust = float(np.median(np.abs(u))) / 0.6745
        return robust if robust > 0 else rms
    return rms


def normalise(u: np.ndarray, normalisation: str) -> np.ndarray:
    """``|u| / scale`` as float32 (zeros for an all-zero tensor)."""
    s = tensor_scale(u, normalisation)
    x = np.abs(u, dtype=np.float32) if u.dtype == np.float32 else np.abs(u).astype(np.float32)
    if s > 0:
        x /= np.float32(s)
    return x


@dataclass
class Field:
    """A normalised field: ``values`` (float32, N entries) in flattening order."""

    values: np.ndarray
    names: list[str]
    shapes: list[tuple[int, ...]]
    offsets: np.ndarray  # tensor t owns values[offsets[t]:offsets[t+1]]
    rms: np.ndarray  # per-tensor RMS of the raw field
    n_full: int  # entries before subsampling
    normalisation: str
    fraction: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.values.size)

    def permuted(self, rng: np.random.Generator) -> np.ndarray:
        """R1 null: the entries of each tensor shuffled (scale is permutation-invariant)."""
        out = self.values.copy()
        for a, b in zip(self.offsets[:-1], self.offsets[1:]):
            out[a:b] = rng.permutation(out[a:b])
        return out

    def gaussian(self, rng: np.random.Generator) -> np.ndarray:
        """R2 null: i.i.d. N(0, rms_t^2) per tensor, normalised like the real field."""
        out = np.empty_like(self.values)
        for t, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            g = rng.standard_normal(b - a, dtype=np.float32) * np.float32(self.rms[t])
            out[a:b] = normalise(g, self.normalisation)
        return out

    def channel(self, name: str, rng: np.random.Generator) -> np.ndarray:
        if name == "real":
            return self.values
        if name == "R1":
            return self.permuted(rng)
        if name == "R2":
            return self.gaussian(rng)
        raise ValueError(f"unknown channel {name!r}: use one of {CHANNELS}")


def _to_numpy(t: Any) -> np.ndarray:
    """A float32 numpy view/copy of a numpy array or torch tensor (bf16/fp16 upcast)."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float32, copy=False)
    return t.detach().float().cpu().numpy()


def collect_field(tensors: Iterable[tuple[str, Any]], normalisation: str = "rms", fraction: float = 1.0,
                  rng: np.random.Generator | None = None) -> Field:
    """Stream ``(name, tensor)`` pairs into a normalised `Field`.

    With ``fraction < 1`` every tensor keeps ``round(fraction * size)`` entries chosen
    uniformly without replacement (seeded by ``rng``), in index order; its scale is
    computed on the full tensor first.
    """
    if fraction < 1.0 and rng is None:
        raise ValueError("subsampling needs an rng")
    parts, names, shapes, sizes, rms = [], [], [], [], []
    n_full = 0
    for name, tensor in tensors:
        u = _to_numpy(tensor).reshape(-1)
        if u.size == 0:
            continue
        if not np.all(np.isfinite(u)):
            raise ValueError(f"field tensor {name!r} has non-finite entries")
        n_full += u.size
        s = tensor_scale(u, normalisation)
        r = float(np.sqrt(np.mean(np.square(u, dtype=np.float64))))
        if fraction < 1.0:
            k = int(round(fraction * u.size))
            if k == 0:
                continue
            keep = np.sort(rng.choice(u.size, size=k, replace=False))
            u = u[keep]
            shape: tuple[int, ...] = (k,)
        else:
            shape = tuple(np.shape(tensor))
        x = np.abs(u).astype(np.float32, copy=False)
        if s > 0:
            x = x / np.float32(s)
        parts.append(x)
        names.append(name)
        shapes.append(shape)
        sizes.append(x.size)
        rms.append(r)
        del u
    if not parts:
        raise ValueError("the field is empty (no tensor matched)")
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Field(values, names, shapes, offsets, np.asarray(rms), n_full, normalisation, fraction)
