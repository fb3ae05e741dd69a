"""Self-checks every linear operator must pass."""

from __future__ import annotations

import torch

from deconflow._types import LinearOperator

__all__ = ["adjointness_error"]


def adjointness_error(
    operator: LinearOperator,
    *,
    n_trials: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> float:
    """Relative mismatch of ``<A x, y>`` and ``<x, A^T y>`` on random tensors.

    Parameters
    ----------
    operator : LinearOperator
        The operator to check.
    n_trials : int
        Number of random pairs ``(x, y)``; the worst mismatch is returned.
    seed : int
        Seed of the random pairs.
    device, dtype
        Where and in which precision the random tensors are made.

    Returns
    -------
    float
        ``max |<Ax, y> - <x, A^T y>| / (||Ax|| ||y||)`` over the trials; about
        1e-7 in float32 and 1e-15 in float64 for a correct adjoint.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    worst = 0.0
    for _ in range(n_trials):
        x = torch.randn(operator.domain_shape, generator=gen, dtype=torch.float64)
        y = torch.randn(operator.range_shape, generator=gen, dtype=torch.float64)
        x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
        ax = operator.A(x)
        aty = operator.A_adjoint(y)
        lhs = torch.sum(ax * y).item()
        rhs = torch.sum(x * aty).item()
        scale = (torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)).item()
        worst = max(worst, abs(lhs - rhs) / max(scale, 1e-300))
    return worst
