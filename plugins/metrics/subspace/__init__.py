"""The ``subspace`` metric plugin: top Hessian eigenpairs, gradient fraction in the top
subspace, and subspace overlap between checkpoints. See `metric` and docs/subspace.md."""

from .metric import SubspaceMetric

__all__ = ["SubspaceMetric"]
