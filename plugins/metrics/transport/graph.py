"""Graphs for the TDU-OFC probe: a fast Barabasi-Albert generator, CSR adjacency, a disk
cache per (N, m, seed), and an implicit lattice over each weight matrix.

Usage::

    g = ba_graph(10**6, m=3, seed=0)                 # CSRGraph, about 1 s
    g = cached_ba_graph(10**6, 3, 0, cache_dir)      # built once, then memory-mapped
    nbrs, owner = g.neighbours(active)               # neighbours of a set of nodes

Why hand-written: networkx's ``barabasi_albert_graph`` is a Python loop (16 s for 10^6
nodes, plus 3.4 s to convert to scipy, 1.1 GB peak). `ba_edges` samples the same random
process with numpy: it is the Batagelj-Brandes "endpoint list" formulation of preferential
attachment (each new edge picks a uniform position in the list of all earlier edge
endpoints, so a node is picked proportionally to its degree), with networkx's start (a star
on m+1 nodes) and its rule that a new node's m targets are distinct (a draw that repeats an
earlier target is rejected and drawn again, exactly as ``_random_subset`` does). The draws
are pre-generated, positions are resolved by pointer chasing, and duplicates are fixed in a
few vectorised rounds until the graph is a fixed point of the sequential process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from harness.atomic import atomic_path

logger = logging.getLogger(__name__)

#: bump when the generator's output for a given (N, m, seed) changes (invalidates caches)
GRAPH_VERSION = 1


def _sequential_prefix(n0: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Endpoint list of the exact sequential process for nodes 0..n0-1 (networkx's loop)."""
    ends = np.empty(2 * m * (n0 - 1), dtype=np.int64)
    ends[:m] = 0  # star on m+1 nodes: hub 0 with leaves 1..m
    ends[m : 2 * m] = np.arange(1, m + 1)
    size = 2 * m
    u = rng.random(8 * m * n0)
    k = 0
    for s in range(m + 1, n0):
        targets: list[int] = []
        while len(targets) < m:
            if k == u.size:
                u, k = rng.random(u.size), 0
            t = int(ends[int(u[k] * size)])
            k += 1
            if t not in targets:
                targets.append(t)
        ends[size : size + m] = targets
        ends[size + m : size + 2 * m] = s
        size += 2 * m
    return ends[:size]


class _Endpoints:
    """The endpoint list beyond the sequential prefix, as a forest of target slots.

    Layout (networkx's order): positions [0, P0) hold the prefix's endpoints (the star and
    the first nodes); vectorised node s (row j = s - s0) owns [P0 + 2m j, P0 + 2m (j+1)):
    m target slots, then m copies of s. A target slot holds the node found at an earlier
    position: a known endpoint (prefix or source copy: a root) or another slot (its parent).
    """

    def __init__(self, prefix: np.ndarray, s0: int, m: int, n_rows: int, idx: type):
        self.prefix, self.s0, self.m, self.p0, self.idx = prefix, s0, m, prefix.size, idx
        self.parent = np.empty(n_rows * m, dtype=idx)  # parent slot, or -1 at a root
        self.direct = np.empty(n_rows * m, dtype=idx)  # node id at a root
        self.vals = np.empty(n_rows * m, dtype=idx)  # resolved node id of every slot

    def point(self, slots: slice | np.ndarray, ptr: np.ndarray) -> None:
        """Make ``slots`` point at list positions ``ptr``."""
        ptr = np.asarray(ptr, dtype=np.int64)
        q = ptr - self.p0
        j, o = np.divmod(np.maximum(q, 0), 2 * self.m)
        is_slot = (q >= 0) & (o < self.m)
        self.parent[slots] = np.where(is_slot, j * self.m + o, -1)
        known = np.where(q < 0, self.prefix[np.minimum(ptr, self.p0 - 1)], j + self.s0)
        self.direct[slots] = np.where(is_slot, 0, known)

    def node_at(self, ptr: np.ndarray) -> np.ndarray:
        """Node ids at positions ``ptr`` under the current ``vals`` (small arrays)."""
        ptr = np.asarray(ptr, dtype=np.int64)
        q = ptr - self.p0
        j, o = np.divmod(np.maximum(q, 0), 2 * self.m)
        out = np.where(o < self.m, self.vals[np.minimum(j * self.m + o, self.vals.size - 1)], j + self.s0)
        return np.where(q < 0, self.prefix[np.minimum(ptr, self.p0 - 1)], out)

    def resolve(self) -> None:
        """``vals`` from the forest by pointer jumping (log of the depth passes)."""
        anc = self.parent.copy()
        roots = anc < 0
        anc[roots] = np.flatnonzero(roots)
        del roots
        active = np.flatnonzero(self.parent >= 0)
        while active.size:
            a = anc[active]
            anc[active] = anc[a]
            active = active[self.parent[anc[active]] >= 0]
        np.take(self.direct, anc, out=self.vals)


def _dup_rows(vals: np.ndarray, m: int) -> np.ndarray:
    """Rows of an (n, m) array with a repeated value."""
    dup = np.zeros(vals.shape[0], dtype=bool)
    for a in range(m):
        for b in range(a + 1, m):
            dup |= vals[:, a] == vals[:, b]
    return np.flatnonzero(dup)


def _stream(seed: int, m: int, row: int, high: int, start: int, count: int) -> np.ndarray:
    """Draws ``start..start+count`` of one node's own rejection stream (same in every round)."""
    return np.random.default_rng([seed, m, 0xBA, row, start]).integers(0, high, size=count)


def ba_edges(n: int, m: int, seed: int, prefix_nodes: int = 2048,
             max_rounds: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Edges (src, dst) of a Barabasi-Albert graph with networkx's distribution.

    Node ids 0..n-1; edges: the star (0, 1..m), then m edges from every node s > m to
    distinct earlier nodes chosen with probability proportional to degree. Deterministic
    in ``seed``. The first ``prefix_nodes`` nodes (where repeated targets are common) run
    the sequential loop; the rest are vectorised: m uniform positions per node in the list
    before it, resolved by pointer jumping; the few rows that repeat a target take the first
    m distinct nodes of their own draw stream, and rounds repeat until nothing changes (a
    fixed point is exactly the sequential process for the same draws).
    """
    if m < 1 or m >= n:
        raise ValueError(f"Barabasi-Albert graph needs 1 <= m < n, got m={m}, n={n}")
    idx = np.int32 if 2 * m * n < 2**31 - 1 else np.int64
    rng = np.random.default_rng([seed, m, 0xBA])
    s0 = min(n, max(prefix_nodes, m + 1))
    prefix = _sequential_prefix(s0, m, rng)
    pre = prefix.reshape(-1, 2 * m)[1:]  # the star's block is special: (0, 1..m)
    head_src = np.concatenate([np.zeros(m, np.int64), pre[:, m:].ravel()])
    head_dst = np.concatenate([np.arange(1, m + 1), pre[:, :m].ravel()])
    n_vec = n - s0
    if n_vec == 0:
        return head_src.astype(idx), head_dst.astype(idx)
    p0 = prefix.size
    high = p0 + 2 * m * np.arange(n_vec, dtype=np.int64)  # list length before each node
    main = rng.integers(0, high[:, None], size=(n_vec, m), dtype=np.int64).astype(idx)
    ep = _Endpoints(prefix, s0, m, n_vec, idx)
    chunk = max(1, 2**22 // m)
    for a in range(0, n_vec, chunk):  # chunked to bound the int64 temporaries
        b = min(n_vec, a + chunk)
        ep.point(slice(a * m, b * m), main[a:b].reshape(-1))
    extended: set[int] = set()
    for rnd in range(max_rounds):
        ep.resolve()
        vals = ep.vals.reshape(n_vec, m)
        check = np.union1d(_dup_rows(vals, m), np.fromiter(extended, np.int64, len(extended)))
        changed = False
        for j in check.tolist():
            ptrs = main[j].astype(np.int64)
            while True:  # first m distinct nodes of the row's stream (main draws, then its own)
                first = np.unique(ep.node_at(ptrs), return_index=True)[1]
                if first.size >= m:
                    break
                ptrs = np.concatenate([ptrs, _stream(seed, m, j, int(high[j]), ptrs.size, 16)])
            new = ptrs[np.sort(first)[:m]]
            (extended.add if ptrs.size > m else extended.discard)(j)
            old_parent = ep.parent[j * m:(j + 1) * m].copy()
            old_direct = ep.direct[j * m:(j + 1) * m].copy()
            ep.point(slice(j * m, (j + 1) * m), new)
            if not (np.array_equal(old_parent, ep.parent[j * m:(j + 1) * m])
                    and np.array_equal(old_direct, ep.direct[j * m:(j + 1) * m])):
                changed = True
        if not changed:
            break
    else:  # pragma: no cover - convergence takes a handful of rounds
        raise RuntimeError(f"BA generator did not converge in {max_rounds} rounds")
    logger.debug("ba_edges n=%d m=%d: %d rounds, %d rows redrawn", n, m, rnd + 1, len(extended))
    del main
    src = np.concatenate([head_src.astype(idx), np.repeat(np.arange(s0, n, dtype=idx), m)])
    dst = np.concatenate([head_dst.astype(idx), ep.vals])
    return src, dst


@dataclass
class CSRGraph:
    """Undirected graph as CSR: neighbours of node i are ``indices[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def neighbours(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour ids, position in ``nodes`` of the node each came from), concatenated."""
        start = self.indptr[nodes].astype(np.int64)
        deg = self.indptr[nodes + 1].astype(np.int64) - start
        total = int(deg.sum())
        owner = np.repeat(np.arange(nodes.size), deg)
        # offsets within each row: 0..deg-1, built without a Python loop
        cum = np.cumsum(deg) - deg
        within = np.arange(total, dtype=np.int64) - np.repeat(cum, deg)
        return np.asarray(self.indices[np.repeat(start, deg) + within]), owner

    def node_degree(self, nodes: np.ndarray) -> np.ndarray:
        return (self.indptr[nodes + 1] - self.indptr[nodes]).astype(np.int64)


def csr_from_edges(n: int, src: np.ndarray, dst: np.ndarray) -> CSRGraph:
    """Symmetric CSR adjacency from an undirected edge list (scipy's linear-time COO->CSR)."""
    rows = np.concatenate([src, dst])
    cols = np.concatenate([dst, src])
    data = np.ones(rows.size, dtype=np.int8)
    mat = sp.coo_array((data, (rows, cols)), shape=(n, n)).tocsr()
    del rows, cols, data
    return CSRGraph(indptr=mat.indptr, indices=mat.indices)


def ba_graph(n: int, m: int = 3, seed: int = 0) -> CSRGraph:
    """A Barabasi-Albert graph on n nodes as CSR."""
    src, dst = ba_edges(n, m, seed)
    return csr_from_edges(n, src, dst)


def cached_ba_graph(n: int, m: int, seed: int, cache_dir: str | os.PathLike | None) -> CSRGraph:
    """`ba_graph`, stored once per (N, m, seed) under ``cache_dir`` and memory-mapped after."""
    if cache_dir is None:
        return ba_graph(n, m, seed)
    base = Path(cache_dir) / f"ba_v{GRAPH_VERSION}_n{n}_m{m}_s{seed}"
    ip, ix = base.with_suffix(".indptr.npy"), base.with_suffix(".indices.npy")
    if ip.exists() and ix.exists():
        return CSRGraph(np.load(ip, mmap_mode="r"), np.load(ix, mmap_mode="r"))
    g = ba_graph(n, m, seed)
    base.parent.mkdir(parents=True, exist_ok=True)
    for path, arr in ((ip, g.indptr), (ix, g.indices)):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a concurrent reader never sees half a file
            np.save(fh, arr)
    return g


class LatticeGraph:
    """Implicit 4-neighbour lattice over each tensor (rows x columns; vectors are chains).

    Nodes are field entries in flattening order; tensors are not connected to each other.
    Nothing is stored but the tensor offsets and shapes.
    """

    def __init__(self, shapes: list[tuple[int, ...]]):
        rows, cols = [], []
        for shp in shapes:
            if len(shp) == 0:
                r, c = 1, 1
            elif len(shp) == 1:
                r, c = 1, int(shp[0])
            else:
                r, c = int(shp[0]), int(np.prod(shp[1:]))
            rows.append(r)
            cols.append(c)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.rows * self.cols)])

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def _coords(self, nodes: np.ndarray):
        t = np.searchsorted(self.offsets, nodes, side="right") - 1
        local = nodes - self.offsets[t]
        r, c = np.divmod(local, self.cols[t])
        return t, r, c

    def node_degree(self, nodes: np.ndarray) -> np.ndarray:
        t, r, c = self._coords(np.asarray(nodes, dtype=np.int64))
        R, C = self.rows[t], self.cols[t]
        return (r > 0).astype(np.int64) + (r < R - 1) + (c > 0) + (c < C - 1)

    @property
    def degree(self) -> np.ndarray:
        return self.node_degree(np.arange(self.n))

    def neighbours(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nodes = np.asarray(nodes, dtype=np.int64)
        t, r, c = self._coords(nodes)
        R, C = self.rows[t], self.cols[t]
        own = np.arange(nodes.size)
        cand = [
            (r > 0, nodes - C),
            (r < R - 1, nodes + C),
            (c > 0, nodes - 1),
            (c < C - 1, nodes + 1),
        ]
        nb = np.concatenate([v[ok] for ok, v in cand])
        owner = np.concatenate([own[ok] for ok, _ in cand])
        return nb, owner
