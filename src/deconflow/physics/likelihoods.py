"""Negative log-likelihoods of a measurement ``y`` given the model mean ``mu = H x + b``.

Both classes share one small interface: ``value(y, mu)`` (a scalar, constants
dropped) and ``gradient(y, mu)`` (its derivative with respect to ``mu``). The
gradient with respect to the object follows by the chain rule,
``H^T gradient(y, H x + b)``, which :func:`data_gradient` computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deconflow._errors import DeconflowError
from deconflow._types import LinearOperator

__all__ = ["GaussianLikelihood", "PoissonLikelihood", "data_gradient"]


@dataclass(frozen=True)
class PoissonLikelihood:
    """Photon-counting noise: ``y ~ Poisson(mu)`` with ``y`` in photons.

    Parameters
    ----------
    floor : float
        Smallest model mean used inside the logarithm and the division, so
        that a voxel predicted dark never yields ``log 0`` or ``1 / 0``.
    """

    floor: float = 1e-6

    def __post_init__(self) -> None:
        if not self.floor > 0:
            raise DeconflowError(f"PoissonLikelihood floor must be > 0, got {self.floor}.")

    def value(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Return ``sum(mu - y log mu)``, the negative log-likelihood up to a constant."""
        mu_safe = mu.clamp_min(self.floor)
        return torch.sum(mu_safe - y * torch.log(mu_safe))

    def gradient(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Return ``1 - y / mu``, the derivative of :meth:`value` with respect to ``mu``."""
        return 1.0 - y / mu.clamp_min(self.floor)

    def deviance(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Return ``2 sum(mu - y + y log(y / mu))``, twice the log-likelihood ratio to ``mu = y``.

        It is 0 when ``mu == y`` and about one per voxel when ``mu`` is the true mean
        (for counts above a few photons), so it measures how closely ``mu`` fits the noise.
        """
        mu_safe = mu.clamp_min(self.floor)
        return 2.0 * torch.sum(mu_safe - y + torch.xlogy(y, y / mu_safe))


@dataclass(frozen=True)
class GaussianLikelihood:
    """Additive white Gaussian noise of standard deviation ``sigma`` (image units)."""

    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma < math.inf:
            raise DeconflowError(
                f"GaussianLikelihood sigma must be a finite number > 0, got {self.sigma}."
            )

    def value(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Return ``||mu - y||^2 / (2 sigma^2)``."""
        return torch.sum((mu - y) ** 2) / (2.0 * self.sigma**2)

    def gradient(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Return ``(mu - y) / sigma^2``."""
        return (mu - y) / self.sigma**2


def data_gradient(
    likelihood: PoissonLikelihood | GaussianLikelihood,
    operator: LinearOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    background: float = 0.0,
) -> torch.Tensor:
    """Gradient of ``likelihood.value(y, H x + background)`` with respect to ``x``."""
    return operator.A_adjoint(likelihood.gradient(y, operator.A(x) + background))
