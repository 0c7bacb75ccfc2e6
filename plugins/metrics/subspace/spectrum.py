"""Top-of-spectrum linear algebra on a Hessian given only as products: eigenpairs (Lanczos),
gradient fraction in the top subspace, subspace overlap, Hutchinson trace.

Definitions (Gur-Ari, Roberts & Dyer 2018; research note dynamics_metrics.md section 3)::

    V_k = [v_1 ... v_k]  top-k eigenvectors (largest algebraic eigenvalues) of H
    f_top(k) = ||V_k^T g||^2 / ||g||^2          chance for a random g: k / P
    overlap(V, W) = ||V_k^T W_k||_F^2 / k         chance for random subspaces: k / P

Example::

    pairs = top_eigenpairs(op, P, k=10, dtype=torch.float32, device="cpu", seed=0)
    f_top(pairs.vectors, g, [1, 5, 10])         # {1: 0.3, 5: 0.6, 10: 0.8}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

logger = logging.getLogger(__name__)


@dataclass
class EigenPairs:
    """Eigenvalues (descending), eigenvectors (P, k) and the products spent finding them."""

    values: np.ndarray
    vectors: np.ndarray
    n_products: int


def top_eigenpairs(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    P: int,
    k: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
    tol: float = 1e-3,
    maxiter: int | None = None,
) -> EigenPairs:
    """Top-k eigenpairs (largest algebraic) by ARPACK's implicitly restarted Lanczos.

    NOTE: ``which='LA'``, not the default 'LM': Gur-Ari's "top" subspace is the largest
    algebraic eigenvalues; 'LM' (and PyHessian's power iteration) can return a large
    negative eigenvalue instead. ARPACK's ``tol`` bounds each Ritz residual relative to its
    eigenvalue, the same scale as `residuals` reports.
    """
    if not 1 <= k < P:
        raise ValueError(f"need 1 <= k < P for Lanczos, got k={k}, P={P}; lower ks or select more parameters")
    count = 0

    def matvec(v: np.ndarray) -> np.ndarray:
        nonlocal count
        count += 1
        vt = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=dtype, device=device)
        return hvp(vt).detach().to("cpu", torch.float64).numpy()

    op = LinearOperator((P, P), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(P)
    try:
        values, vectors = eigsh(op, k=k, which="LA", tol=tol, v0=v0, maxiter=maxiter)
    except ArpackNoConvergence as exc:
        raise RuntimeError(
            f"Lanczos did not converge to the top {k} eigenpairs within {count} Hessian-vector products "
            f"({len(exc.eigenvalues)} converged); raise eig_maxiter or eig_tol"
        ) from exc
    order = np.argsort(values)[::-1]
    return EigenPairs(values[order], vectors[:, order], count)


def residuals(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    values: np.ndarray,
    vectors: np.ndarray,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> np.ndarray:
    """||H v - lambda v|| / |lambda| for every pair (one product each)."""
    out = np.empty(len(values))
    for i, lam in enumerate(values):
        v = torch.as_tensor(vectors[:, i], dtype=dtype, device=device)
        hv = hvp(v).detach().to("cpu", torch.float64).numpy()
        out[i] = np.linalg.norm(hv - lam * vectors[:, i]) / max(abs(lam), np.finfo(float).tiny)
    return out


def f_top(vectors: np.ndarray, g: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of ||g||^2 inside span of the first k columns of ``vectors`` (orthonormal)."""
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    gg = float(g @ g)
    if gg == 0.0:
        raise ValueError("the gradient is exactly zero: f_top is undefined")
    proj2 = np.cumsum((np.asarray(vectors, dtype=np.float64).T @ g) ** 2)
    return {int(k): float(proj2[k - 1] / gg) for k in ks}


def subspace_overlap(v1: np.ndarray, v2: np.ndarray, k: int) -> float:
    """||V1_k^T V2_k||_F^2 / k: 1 for the same subspace, 0 for orthogonal ones."""
    m = np.asarray(v1[:, :k], dtype=np.float64).T @ np.asarray(v2[:, :k], dtype=np.float64)
    return float(np.sum(m * m) / k)


def hutchinson_trace(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    P: int,
    n: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
) -> tuple[float, float]:
    """Hutchinson estimate of tr(H) with ``n`` Rademacher probes: (mean, standard error)."""
    g = torch.Generator().manual_seed(int(seed))
    samples = []
    for _ in range(n):
        z = (torch.randint(0, 2, (P,), generator=g) * 2 - 1).to(device=device, dtype=dtype)
        samples.append(float(z.double() @ hvp(z).double()))
    arr = np.asarray(samples)
    stderr = float(arr.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(arr.mean()), stderr
