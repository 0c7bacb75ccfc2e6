"""The TDU-OFC cascade engine: a field injected as the initial load of a thresholded,
dissipative Olami-Feder-Christensen diffusion on a graph (docs/transport.md: the reconstruction).

One synchronous sweep::

    A = {i : x_i >= theta}                 # toppling nodes; stop when empty
    out_i = x_i for i in A;  x_i <- 0      # each toppling node empties ...
    x_j += alpha * out_i / k_i             # ... into its k_i neighbours, losing (1-alpha)

and a cascade reports S = sum |A| (topplings), area = distinct toppled nodes,
T = sweeps with |A| > 0 (duration) and M = sum out (transported load).

Work per sweep is proportional to |A| x degree: only toppling nodes and their neighbours
are touched (the first sweep scans the field once to find A). ``relax_torch`` is the same
algorithm on a torch device (a GPU when there is one).

Example::

    g = ba_graph(1000, 3, seed=0)
    ev = relax(x.astype(np.float64), theta=np.quantile(x, 0.99), graph=g, alpha=0.8)
    ev.S, ev.T, ev.M
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cascade:
    """Statistics of one cascade (one relaxation event)."""

    S: int  # topplings (cascade size)
    area: int  # distinct toppled nodes (extent)
    T: int  # sweeps with at least one toppling (duration)
    M: float  # total transported load: sum of the loads of toppling nodes
    truncated: bool = False  # stopped at max_sweeps before the field was stable


def relax(x: np.ndarray, theta: float, graph: Any, alpha: float, max_sweeps: int = 100_000,
          active: np.ndarray | None = None) -> Cascade:
    """Relax load ``x`` (float64, modified in place) until no node is at or above ``theta``.

    ``graph`` offers ``neighbours(nodes) -> (ids, owner)`` and ``node_degree(nodes)``
    (`CSRGraph` or `LatticeGraph`). ``active`` is the first toppling set when known
    (driven events); otherwise the field is scanned once.
    """
    if not theta > 0:
        raise ValueError(f"threshold must be > 0, got {theta!r}")
    if active is None:
        active = np.flatnonzero(x >= theta)
    toppled = np.zeros(x.size, dtype=bool)
    S = T = area = 0
    M = 0.0
    while active.size:
        if T >= max_sweeps:
            return Cascade(S, area, T, M, truncated=True)
        T += 1
        S += active.size
        area += int(np.count_nonzero(~toppled[active]))
        toppled[active] = True
        out = x[active]
        M += float(out.sum())
        x[active] = 0.0
        nb, owner = graph.neighbours(active)
        k = graph.node_degree(active)
        share = alpha * out / np.maximum(k, 1)  # a node without neighbours just dissipates
        cand, inv = np.unique(nb, return_inverse=True)
        x[cand] += np.bincount(inv, weights=share[owner], minlength=cand.size)
        active = cand[x[cand] >= theta]
    return Cascade(S, area, T, M)


def driven_events(x: np.ndarray, theta: float, graph: Any, alpha: float, n_events: int,
                  drive: str, rng: np.random.Generator, max_sweeps: int = 100_000) -> list[Cascade]:
    """OFC driving after a global relaxation: raise load until one node reaches ``theta``,
    relax, record; ``n_events`` times.

    ``drive="random_node"`` tops up one uniformly chosen node to ``theta``;
    ``drive="uniform"`` adds ``theta - max(x)`` to every node (classic OFC; O(N) per event).
    """
    relax(x, theta, graph, alpha, max_sweeps)
    events = []
    for _ in range(n_events):
        if drive == "random_node":
            i = int(rng.integers(x.size))
            x[i] = theta
        elif drive == "uniform":
            i = int(np.argmax(x))
            x += theta - x[i]
            x[i] = theta  # exact, whatever the rounding of the addition
        else:
            raise ValueError(f"unknown drive {drive!r}: use random_node or uniform")
        events.append(relax(x, theta, graph, alpha, max_sweeps, active=np.flatnonzero(x >= theta)))
    return events


def relax_torch(x: Any, theta: float, indptr: Any, indices: Any, alpha: float,
                max_sweeps: int = 100_000) -> Cascade:
    """`relax` on torch tensors (``x`` float64 on the device; CSR ``indptr``/``indices``
    int64 on the same device). Same synchronous sweeps, so the same cascade."""
    import torch

    if not theta > 0:
        raise ValueError(f"threshold must be > 0, got {theta!r}")
    active = torch.nonzero(x >= theta).flatten()
    toppled = torch.zeros(x.numel(), dtype=torch.bool, device=x.device)
    S = T = area = 0
    M = 0.0
    while active.numel():
        if T >= max_sweeps:
            return Cascade(S, area, T, M, truncated=True)
        T += 1
        S += active.numel()
        area += int((~toppled[active]).sum())
        toppled[active] = True
        out = x[active]
        M += float(out.sum())
        x[active] = 0.0
        start, end = indptr[active], indptr[active + 1]
        deg = end - start
        owner = torch.repeat_interleave(torch.arange(active.numel(), device=x.device), deg)
        offs = torch.arange(int(deg.sum()), device=x.device) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
        nb = indices[start[owner] + offs]
        share = alpha * out / deg.clamp(min=1).to(out.dtype)
        cand, inv = torch.unique(nb, return_inverse=True)
        add = torch.zeros(cand.numel(), dtype=x.dtype, device=x.device).index_add_(0, inv, share[owner])
        x[cand] += add
        active = cand[x[cand] >= theta]
    return Cascade(S, area, T, M)
