"""Wiener–Tikhonov deconvolution solved exactly on the non-circulant model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from deconflow._errors import DeconflowError
from deconflow.physics.blur import ConvolutionOperator
from deconflow.physics.noise import estimate_noise_sigma

__all__ = ["Wiener", "fourier_tikhonov_inverse"]


def fourier_tikhonov_inverse(
    operator: ConvolutionOperator, r: torch.Tensor, regularization: float
) -> torch.Tensor:
    """Apply ``(|OTF|^2 + lambda)^-1`` on the FFT grid to an object-domain tensor.

    This is the classic Wiener filter's division, exact for the periodic model
    and a close, symmetric positive-definite approximation of
    ``(H^T H + lambda I)^-1`` for the valid model, which makes it a good
    preconditioner.
    """
    dims = tuple(range(-operator.ndim, 0))
    spectrum = torch.fft.rfftn(r, s=operator.fft_shape, dim=dims)
    spectrum /= operator.otf.abs().square() + regularization
    full = torch.fft.irfftn(spectrum, s=operator.fft_shape, dim=dims)
    return full[(..., *(slice(0, n) for n in operator.object_shape))]


@dataclass(frozen=True)
class Wiener:
    """Wiener–Tikhonov: ``argmin ||H x + b - y||^2 + lambda ||x||^2``, then clipped at 0.

    The minimiser is found by preconditioned conjugate gradients on the
    edge-aware (valid) model; the preconditioner is the Fourier (circulant)
    Wiener filter, which is also the first estimate, so ``iterations=0``
    returns the classic one-shot Wiener filter and a few iterations remove its
    wrap-around at the stack's faces.

    Parameters
    ----------
    regularization : float or None
        ``lambda`` (dimensionless for a PSF that sums to 1: the
        noise-to-signal power ratio). ``None`` estimates it from the data as
        ``sigma^2 / mean((y - b)^2)`` with ``sigma`` the noise level.
    iterations : int
        Conjugate-gradient iterations after the Fourier estimate.
    clip_negative : bool
        Set negative intensities (ringing, noise) to 0 in the result.
    """

    regularization: float | None = None
    iterations: int = 10
    clip_negative: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise DeconflowError(f"iterations must be >= 0, got {self.iterations}.")
        if self.regularization is not None and not self.regularization > 0:
            raise DeconflowError(
                f"regularization must be > 0 (or None for automatic), got {self.regularization}."
            )

    @property
    def total_steps(self) -> int:
        """Number of estimates :meth:`iterate` yields."""
        return self.iterations + 1

    def iterate(
        self,
        y: torch.Tensor,
        operator: ConvolutionOperator,
        background: float = 0.0,
        noise_sigma: float | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the Fourier estimate, then each conjugate-gradient iterate.

        Parameters
        ----------
        y : torch.Tensor
            Measurement in the image's units.
        operator : ConvolutionOperator
            Forward model.
        background : float
            Constant background subtracted before solving.
        noise_sigma : float, optional
            Noise level for the automatic ``regularization``; estimated from
            ``y`` when missing.
        """
        data = y - background
        lam = self.regularization
        if lam is None:
            if noise_sigma is None:
                noise_sigma = estimate_noise_sigma(data.detach().cpu().numpy())
            power = float(data.square().mean().item())
            lam = min(max(noise_sigma**2 / max(power, 1e-30), 1e-5), 1.0)

        def normal(v: torch.Tensor) -> torch.Tensor:
            return operator.A_adjoint_A(v) + lam * v

        def finish(v: torch.Tensor) -> torch.Tensor:
            return v.clamp_min(0.0) if self.clip_negative else v

        rhs = operator.A_adjoint(data)
        x = fourier_tikhonov_inverse(operator, rhs, lam)
        yield finish(x)
        r = rhs - normal(x)
        z = fourier_tikhonov_inverse(operator, r, lam)
        p = z.clone()
        rz = torch.sum(r * z)
        for _ in range(self.iterations):
            q = normal(p)
            pq = torch.sum(p * q)
            if pq <= 0:
                yield finish(x)
                continue
            alpha = rz / pq
            x = x + alpha * p
            r = r - alpha * q
            z = fourier_tikhonov_inverse(operator, r, lam)
            rz_new = torch.sum(r * z)
            p = z + (rz_new / rz) * p if rz > 0 else z
            rz = rz_new
            yield finish(x)

    def __call__(
        self, y: torch.Tensor, operator: ConvolutionOperator, background: float = 0.0
    ) -> torch.Tensor:
        """Run all iterations and return the final object-domain estimate."""
        x = y
        for x in self.iterate(y, operator, background):  # noqa: B007 - keep the last
            pass
        return x
