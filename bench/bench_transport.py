"""Benchmark of the transport probe (issue 6): prints timings and ratios.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_transport.py            # all parts
    .venv/bin/python bench/bench_transport.py --part graph --n 1000000
    .venv/bin/python bench/bench_transport.py --part probe --n 10000000

graph: our Barabasi-Albert generator + CSR vs networkx's ``barabasi_albert_graph`` +
``to_scipy_sparse_array``. relax: one global relaxation touching only toppling nodes vs a
full sparse mat-vec per sweep. probe: the whole checkpoint-scope probe (field collection,
graph, real + R1 + R2 channels) on an i.i.d. Gaussian field, in a fresh process so the peak
memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def bench_graph(n: int, m: int = 3) -> None:
    import networkx as nx

    from harness_plugins.metrics.transport.graph import ba_graph

    t = time.perf_counter()
    g = ba_graph(n, m, 0)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    G = nx.barabasi_albert_graph(n, m, seed=0)
    t_nx = time.perf_counter() - t
    t = time.perf_counter()
    nx.to_scipy_sparse_array(G, format="csr")
    t_conv = time.perf_counter() - t
    print(f"graph N={n:.0e} m={m}: ours {ours:.2f} s (max degree {int(g.degree.max())}); networkx {t_nx:.2f} s "
          f"+ conversion {t_conv:.2f} s = {t_nx + t_conv:.2f} s; ratio {(t_nx + t_conv) / ours:.1f}x")


def bench_relax(n: int, q: float = 0.99, alpha: float = 0.8) -> None:
    import scipy.sparse as sp

    from harness_plugins.metrics.transport.graph import ba_graph
    from harness_plugins.metrics.transport.probe import relax

    g = ba_graph(n, 3, 0)
    x0 = np.abs(np.random.default_rng(0).standard_normal(n))
    theta = float(np.quantile(x0, q))
    t = time.perf_counter()
    ev = relax(x0.copy(), theta, g, alpha)
    t_touch = time.perf_counter() - t
    deg = g.degree.astype(float)
    A = sp.csr_array((np.ones(g.indices.size), g.indices, g.indptr), shape=(n, n))
    t = time.perf_counter()
    x, S, T = x0.copy(), 0, 0
    while True:  # the textbook sweep: x <- x - out + alpha * A (out / k), over every node
        act = x >= theta
        if not act.any():
            break
        out = np.where(act, x, 0.0)
        S, T = S + int(act.sum()), T + 1
        x = x - out + alpha * (A @ (out / deg))
    t_full = time.perf_counter() - t
    assert (S, T) == (ev.S, ev.T), "both sweeps must give the same cascade"
    print(f"relax N={n:.0e} q={q}: S={ev.S} T={ev.T}; touching topplers {t_touch:.3f} s, full mat-vec "
          f"{t_full:.3f} s; ratio {t_full / t_touch:.1f}x")


def _probe_child(n: int, reps: int) -> None:
    import torch

    from harness.api import Checkpoint, CheckpointContext, CheckpointRef
    from harness_plugins.metrics.transport import TransportMetric

    torch.set_num_threads(1)

    class Ckpt(Checkpoint):
        def field_kinds(self):
            return ("gradient",)

        def field(self, kind, modules=None):  # streamed: 10 tensors, each made on demand
            g = torch.Generator().manual_seed(0)
            for i in range(10):
                yield f"layer{i}.w", torch.randn(n // 10 // 1000, 1000, generator=g)

    with tempfile.TemporaryDirectory() as tmp:
        met = TransportMetric(n_reps=reps, event_records=0)
        t = time.perf_counter()
        ctx = CheckpointContext({}, __import__("pathlib").Path(tmp), 0, Ckpt(CheckpointRef("b", "b", "b", 0)))
        recs = {(r.measure, r.task): r.value for r in met.measure(ctx)}
        wall = time.perf_counter() - t
        t = time.perf_counter()
        list(met.measure(ctx))
        warm = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"n": n, "reps": reps, "wall_s": wall, "warm_cache_s": warm, "peak_gb": peak,
                      "S_mean": recs[("S_mean", "real")], "T_mean": recs[("T_mean", "real")]}))


def bench_probe(n: int, reps: int) -> None:
    out = subprocess.run([sys.executable, __file__, "--part", "_child", "--n", str(n), "--reps", str(reps)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"probe N={n:.0e} (real+R1+R2, {reps} reps each, graph built): {r['wall_s']:.1f} s, "
          f"peak {r['peak_gb']:.2f} GB; again with the cached graph {r['warm_cache_s']:.1f} s; "
          f"<S>={r['S_mean']:.0f} <T>={r['T_mean']:.2f}; vs the 60 s / 3 GB budget: "
          f"{60 / r['wall_s']:.1f}x / {3 / r['peak_gb']:.1f}x headroom")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["all", "graph", "relax", "probe", "_child"])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--reps", type=int, default=4)
    a = ap.parse_args()
    if a.part == "_child":
        _probe_child(a.n, a.reps)
        return
    if a.part in ("all", "graph"):
        bench_graph(a.n or 10**6)
    if a.part in ("all", "relax"):
        bench_relax(a.n or 10**6)
    if a.part in ("all", "probe"):
        bench_probe(a.n or 10**7, a.reps)


if __name__ == "__main__":
    main()
