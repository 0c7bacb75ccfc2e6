"""TDU-OFC relaxation: hand-worked cascades, a dense brute-force reference, the torch path."""

from __future__ import annotations

import numpy as np
import pytest

from harness_plugins.metrics.transport.graph import CSRGraph, ba_graph, csr_from_edges
from harness_plugins.metrics.transport.probe import driven_events, relax, relax_torch


def six_node_graph() -> CSRGraph:
    edges = np.array([(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (4, 5)])
    return csr_from_edges(6, edges[:, 0], edges[:, 1])


def test_hand_worked_six_node_cascade():
    """Worked by hand (alpha=1/2, theta=1); degrees 2,2,3,2,2,1.

    sweep 1: {0} topples 2       -> 1: 1.1, 2: 1.0
    sweep 2: {1,2} topple 1.1, 1 -> 0: .275+1/6, 1: 1/6, 2: .275, 3: .9+1/6 = 16/15
    sweep 3: {3} topples 16/15   -> 2: .275+4/15, 4: .95+4/15 = 73/60
    sweep 4: {4} topples 73/60   -> 3: 73/240, 5: 73/240;  nothing >= 1 is left
    """
    x = np.array([2.0, 0.6, 0.5, 0.9, 0.95, 0.0])
    total = x.sum()
    ev = relax(x, theta=1.0, graph=six_node_graph(), alpha=0.5)
    assert (ev.S, ev.area, ev.T, ev.truncated) == (5, 5, 4, False)
    assert ev.M == pytest.approx(2 + 1.1 + 1.0 + 16 / 15 + 73 / 60, rel=1e-12)
    expected = [0.275 + 1 / 6, 1 / 6, 0.275 + 4 / 15, 73 / 240, 0.0, 73 / 240]
    np.testing.assert_allclose(x, expected, rtol=1e-12)
    # load balance: what is left plus what dissipated is what was injected
    assert x.sum() + (1 - 0.5) * ev.M == pytest.approx(total, rel=1e-12)


def test_two_node_ping_pong_closed_form():
    """Load 5 bounces between two nodes losing 10% per toppling: 5*0.9^k >= 1 for k=0..15."""
    x = np.array([5.0, 0.0])
    ev = relax(x, 1.0, csr_from_edges(2, np.array([0]), np.array([1])), alpha=0.9)
    assert (ev.S, ev.area, ev.T) == (16, 2, 16)
    assert ev.M == pytest.approx(5 * (1 - 0.9**16) / 0.1, rel=1e-12)


def dense_reference(x: np.ndarray, theta: float, g: CSRGraph, alpha: float):
    """Brute force: a full dense matrix-vector product per sweep over all nodes."""
    n = x.size
    P = np.zeros((n, n))
    for i in range(n):
        nb = g.indices[g.indptr[i]:g.indptr[i + 1]]
        P[nb, i] = 1.0 / len(nb)
    S = T = 0
    M = 0.0
    toppled = np.zeros(n, bool)
    while True:
        A = x >= theta
        if not A.any():
            return S, int(toppled.sum()), T, M, x
        out = np.where(A, x, 0.0)
        S, T, M = S + int(A.sum()), T + 1, M + out.sum()
        toppled |= A
        x = x - out + alpha * P @ out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_relaxation_equals_dense_brute_force(seed):
    rng = np.random.default_rng(seed)
    g = ba_graph(300, 3, seed)
    x = np.abs(rng.standard_normal(300)) * 2
    S, area, T, M, x_ref = dense_reference(x.copy(), 1.5, g, 0.9)
    ev = relax(x, 1.5, g, 0.9)
    assert (ev.S, ev.area, ev.T) == (S, area, T) and S > 10
    assert ev.M == pytest.approx(M, rel=1e-10)
    np.testing.assert_allclose(x, x_ref, rtol=1e-10, atol=1e-12)


def test_torch_path_matches_numpy():
    torch = pytest.importorskip("torch")
    g = ba_graph(2000, 3, 4)
    x = np.abs(np.random.default_rng(4).standard_normal(2000))
    theta = float(np.quantile(x, 0.9))
    ev = relax(x.copy(), theta, g, 0.95)
    tev = relax_torch(torch.as_tensor(x.copy()), theta, torch.as_tensor(g.indptr, dtype=torch.int64),
                      torch.as_tensor(g.indices, dtype=torch.int64), 0.95)
    assert (tev.S, tev.area, tev.T) == (ev.S, ev.area, ev.T)
    assert tev.M == pytest.approx(ev.M, rel=1e-9)


def test_truncation_and_bad_threshold():
    x = np.array([5.0, 0.0])
    g = csr_from_edges(2, np.array([0]), np.array([1]))
    ev = relax(x, 1.0, g, alpha=0.9, max_sweeps=3)
    assert ev.truncated and ev.T == 3
    with pytest.raises(ValueError, match="threshold"):
        relax(np.ones(2), 0.0, g, 0.9)


def test_driven_events_topple_the_driven_node():
    g = ba_graph(500, 3, 0)
    x = np.abs(np.random.default_rng(0).standard_normal(500))
    theta = float(np.quantile(x, 0.95))
    for drive in ("random_node", "uniform"):
        evs = driven_events(x.copy(), theta, g, 0.9, 20, drive, np.random.default_rng(1))
        assert len(evs) == 20 and all(e.S >= 1 and e.T >= 1 for e in evs)
