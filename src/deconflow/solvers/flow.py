"""Posterior sampling with a flow-matching prior and the measured PSF.

Both samplers alternate a prior step (the flow's denoiser ``D_t``, see
:mod:`deconflow.priors.flow` for the time convention: ``t = 0`` noise,
``t = 1`` data, ``x_t = t x1 + (1 - t) eps``) with a measurement step against
``y = H x + b`` and re-noising to the next time. They work in prior units
``u`` with ``x = scale * u + offset`` (the prior's intensity normalisation), so
the data term is ``||scale * H u - (y - b - offset)||^2_W / 2`` with per-voxel
weights ``W = 1 / Var[y]`` from the camera noise model (Poisson photon noise
plus read noise, the variance-stabilised Gaussian likelihood).

- :class:`~deconflow.solvers.poisson_flow.PoissonFlowSampler` (default): the same
  scheme with the Poisson likelihood itself, solved by MAP-EM; see its module for why
  it replaced the Gaussian step as the default.
- :class:`ExactDataFlowSampler` (in the spirit of Flower and
  OT-ODE): the measurement step is the exact proximal solve
  ``argmin_u ||scale H u - d||^2_W / 2 + rho ||u - D_t(u_t)||^2 / (2 gamma_t^2)``
  by conjugate gradients preconditioned with the Fourier (Wiener) solve, and
  it is *perturb-and-MAP*: ``d`` gets noise of covariance ``W^-1`` and the
  denoised estimate noise of variance ``gamma_t^2 = Var[x1 | x_t]``, so each
  run is a posterior sample. For a Gaussian prior every step is an exact
  posterior sample (tested).
- :class:`PnPFlowSampler` (PnP-Flow): a gradient step on the data term,
  re-noise to ``t``, denoise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from deconflow._device import check_precision
from deconflow._errors import DeconflowError
from deconflow.physics.blur import ConvolutionOperator
from deconflow.priors.flow import interpolate
from deconflow.solvers._schedule import (
    Denoiser,
    check_at_least_one,
    check_positive,
    check_schedule,
    normal_noise,
    posterior_variance,
    sampler_times,
)
from deconflow.solvers.poisson_flow import PoissonFlowSampler
from deconflow.solvers.wiener import fourier_tikhonov_inverse

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "ExactDataFlowSampler",
    "FlowDeconvolution",
    "MeasurementModel",
    "PnPFlowSampler",
    "PoissonFlowSampler",
    "posterior_variance",
]


@dataclass(frozen=True)
class MeasurementModel:
    """The measurement in prior units: ``d = y - b - offset ≈ scale * H u``, weights ``W``.

    Attributes
    ----------
    operator : ConvolutionOperator
        ``H``.
    data : torch.Tensor
        ``d``, image domain.
    weights : torch.Tensor
        ``W = 1 / Var[y]`` per voxel (image domain), or a 0-d tensor for a
        constant weight.
    scale : float
        Image units per prior unit.
    """

    operator: ConvolutionOperator
    data: torch.Tensor
    weights: torch.Tensor
    scale: float

    def normal(self, u: torch.Tensor) -> torch.Tensor:
        """``scale^2 H^T W H u``."""
        op = self.operator
        return (self.scale**2) * op.A_adjoint(self.weights * op.A(u))

    def back_project(self, d: torch.Tensor) -> torch.Tensor:
        """``scale H^T W d``."""
        return self.scale * self.operator.A_adjoint(self.weights * d)

    def gradient(self, u: torch.Tensor) -> torch.Tensor:
        """Gradient of ``||scale H u - d||^2_W / 2``."""
        residual = self.scale * self.operator.A(u) - self.data
        return self.back_project(residual)

    @property
    def mean_weight(self) -> float:
        """Average weight, for the Fourier preconditioner and step sizes."""
        return float(self.weights.mean().item())


def _proximal_solve(
    model: MeasurementModel,
    rhs_data: torch.Tensor,
    anchor: torch.Tensor,
    precision: float,
    iterations: int,
) -> torch.Tensor:
    """Solve ``(scale^2 H^T W H + precision I) u = scale H^T W d + precision * anchor`` by PCG."""
    op = model.operator
    data_precision = model.scale**2 * max(model.mean_weight, 1e-30)
    ratio = precision / data_precision

    def apply(v: torch.Tensor) -> torch.Tensor:
        return model.normal(v) + precision * v

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return fourier_tikhonov_inverse(op, r, ratio) / data_precision

    rhs = model.back_project(rhs_data) + precision * anchor
    u = anchor.clone()
    r = rhs - apply(u)
    z = precondition(r)
    p = z.clone()
    rz = torch.sum(r * z)
    for _ in range(iterations):
        q = apply(p)
        pq = torch.sum(p * q)
        if pq <= 0 or rz <= 0:
            break
        alpha = rz / pq
        u += alpha * p
        r -= alpha * q
        z = precondition(r)
        rz_new = torch.sum(r * z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return u


class _OneVolumeAtATime:
    """``iterate_batch`` for the samplers whose steps call the prior on one volume.

    The exact sampler's conjugate-gradient solve stops on each sample's own residual, so
    its samples cannot share a step; they advance in lockstep instead.
    """

    def iterate(
        self,
        model: MeasurementModel,
        prior: Denoiser,
        generator: torch.Generator,
        initial: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield one sample's estimate after each step (the samplers define it)."""
        raise NotImplementedError

    def iterate_batch(
        self,
        model: MeasurementModel,
        prior: Denoiser,
        generators: Sequence[torch.Generator],
        initial: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """One trajectory per generator, in lockstep: yield ``(K, *object_shape)`` per step.

        Sample ``k`` is exactly what :meth:`iterate` draws with ``generators[k]``.
        """
        trajectories = [self.iterate(model, prior, g, initial) for g in generators]
        for estimates in zip(*trajectories, strict=True):
            yield torch.stack(estimates)


@dataclass(frozen=True)
class ExactDataFlowSampler(_OneVolumeAtATime):
    """Flow posterior sampler with an exact (proximal) data step and perturb-and-MAP.

    Parameters
    ----------
    steps : int
        Prior evaluations per sample.
    prior_weight : float
        ``rho``: multiplies the prior's precision ``1 / gamma_t^2``; larger
        trusts the prior more, smaller the data.
    data_variance : float
        Variance of sharp volumes in prior units, which sets
        ``gamma_t^2 = Var[x1 | x_t]``.
    cg_iterations : int
        Conjugate-gradient iterations of each data step.
    t_start : float
        First time (0: start from pure noise).
    perturb : bool
        Perturb-and-MAP (a posterior sample); ``False`` gives a point estimate.
    perturb_last : bool
        Perturb the last step too. ``False`` ends every trajectory on the MAP
        around the prior's final estimate: the samples then differ only by
        their trajectories, which keeps white perturbation noise out of
        frequencies the data do not constrain (the Gaussian ``gamma_t`` model
        of the prior's uncertainty is crude there).
    """

    steps: int = 20
    prior_weight: float = 1.0
    data_variance: float = 0.05
    cg_iterations: int = 8
    t_start: float = 0.0
    perturb: bool = True
    perturb_last: bool = True

    def __post_init__(self) -> None:
        check_schedule(self.steps, self.t_start)
        check_positive(prior_weight=self.prior_weight, data_variance=self.data_variance)
        check_at_least_one(cg_iterations=self.cg_iterations)

    def iterate(
        self,
        model: MeasurementModel,
        prior: Denoiser,
        generator: torch.Generator,
        initial: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the data-consistent estimate ``u1`` after each step; the last is the sample.

        ``initial`` (object domain, prior units) is re-noised to ``t_start`` to start
        from; without it the sampler starts from noise.
        """
        noise = normal_noise(model.operator.object_shape, model.data, generator)
        image_noise = normal_noise(model.data.shape, model.data, generator)
        times = sampler_times(self.steps, self.t_start)
        u_t = noise()
        if initial is not None:
            u_t = interpolate(initial, u_t, self.t_start)
        for k, t in enumerate(times):
            estimate = prior.denoise(u_t, t, initial)
            gamma2 = posterior_variance(t, self.data_variance)
            anchor, data = estimate, model.data
            last = k + 1 == len(times)
            if self.perturb and (self.perturb_last or not last):
                anchor = estimate + gamma2**0.5 * noise()
                data = model.data + image_noise() / model.weights.clamp_min(1e-30).sqrt()
            u1 = _proximal_solve(
                model, data, anchor, self.prior_weight / gamma2, self.cg_iterations
            )
            yield u1
            if k + 1 < len(times):
                u_t = interpolate(u1, noise(), times[k + 1])


@dataclass(frozen=True)
class PnPFlowSampler(_OneVolumeAtATime):
    """PnP-Flow: gradient step on the data term, re-noise to ``t``, denoise.

    Parameters
    ----------
    steps : int
        Prior evaluations.
    step_size : float
        Gradient step as a multiple of ``1 / (scale^2 max W)`` (the inverse
        Lipschitz constant of the data term's gradient for a PSF summing to 1).
    t_start : float
        First time.
    """

    steps: int = 20
    step_size: float = 1.0
    t_start: float = 0.0

    def __post_init__(self) -> None:
        check_schedule(self.steps, self.t_start)
        check_positive(step_size=self.step_size)

    def iterate(
        self,
        model: MeasurementModel,
        prior: Denoiser,
        generator: torch.Generator,
        initial: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the denoised estimate after each step (starting from ``initial`` or 0)."""
        shape = model.operator.object_shape
        like = model.data
        noise = normal_noise(shape, like, generator)
        lipschitz = model.scale**2 * float(model.weights.max().item())
        eta = self.step_size / max(lipschitz, 1e-30)
        u = torch.zeros(shape, device=like.device, dtype=like.dtype) if initial is None else initial
        for t in sampler_times(self.steps, self.t_start):
            z = u - eta * model.gradient(u)
            u = prior.denoise(interpolate(z, noise(), t), t, initial)
            yield u


SAMPLERS = ("poisson", "exact", "pnp")


@dataclass(frozen=True)
class FlowDeconvolution:
    """Settings of ``method="flow"``: which sampler, how many steps and samples, which prior.

    Parameters
    ----------
    sampler : {"poisson", "exact", "pnp"}
        ``"poisson"``: :class:`~deconflow.solvers.poisson_flow.PoissonFlowSampler`
        (default); ``"exact"``: :class:`ExactDataFlowSampler` (Gaussian data step);
        ``"pnp"``: :class:`PnPFlowSampler`.
    steps : int
        Prior (network) evaluations per sample.
    samples : int
        Posterior samples; the result is their mean, their standard deviation
        is the uncertainty map.
    prior_weight : float
        Strength of the prior relative to the data ("poisson" and "exact").
    data_variance : float
        Variance of sharp volumes in prior units ("poisson" and "exact").
    em_iterations : int
        EM iterations per data step ("poisson").
    cg_iterations : int
        Conjugate-gradient iterations per data step ("exact").
    step_size : float
        Gradient step of the PnP sampler, in units of the inverse Lipschitz constant.
    t_start : float
        Time the samplers start at. Above 0 they start from the first (RL)
        estimate re-noised to ``t_start`` instead of from pure noise, which
        needs fewer network evaluations.
    perturb : bool
        Perturb-and-MAP ("poisson" and "exact"): add the Gaussian model's prior error
        ``N(0, gamma_t^2)`` to the prior's estimate before each data step. Off by
        default: that model overstates the trained network's error (the shipped prior's
        measured ``D_t`` error variance is 3-16 times below ``gamma_t^2`` for
        t = 0.3-0.95), and the added noise cost 1.5-4 dB per sample on in-distribution
        volumes. Samples still differ through their re-noised trajectories, which is
        where the prior is unsure.
    em_start : {"previous", "prior"}
        Where each data step's EM iterations start ("poisson"; see
        :class:`~deconflow.solvers.poisson_flow.PoissonFlowSampler`).
    choose_strength : bool
        Before the run, try these settings, the prior-led ``em_start="prior"`` (with at
        least 15 EM iterations) and a prior weight 10/3 times higher on 80 % of the
        photons of a window of the stack, and keep the one that predicts the other 20 %
        best ("poisson" only; :mod:`deconflow._flow_choice`). How far the prior can be
        trusted differs from stack to stack.
    first_iterations : int or None
        Richardson–Lucy iterations (on shifted-Poisson photon counts) of the first
        estimate; ``None`` chooses them by cross-validation on held-out photons
        (:class:`~deconflow.solvers.stopping.CrossValidatedStop`).
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the prior network: ``"auto"`` runs it in bfloat16 where the GPU or
        CPU does so natively (3x faster on a CPU with AMX; the flow benchmark's PSNR moves
        by under 0.05 dB), else float32.
    weights : str or None
        Prior weights file (a ``pathlib.Path`` is accepted and stored as text); ``None``
        uses the weights shipped with deconflow.
    seed : int or None
        Seed of the samples (``None``: a fresh random seed each run).
    gain, camera_offset, read_sigma : float or None
        Camera noise model (ADU per photon, ADU, ADU); ``None`` estimates each
        from the image.
    keep_samples : bool
        Keep every sample in the result (memory: one stack per sample).
    """

    # the samplers' own defaults, read from their classes so that the two cannot drift
    # apart; the schedule and prior strength are the default (Poisson) sampler's
    sampler: str = "poisson"
    steps: int = PoissonFlowSampler.steps
    samples: int = 1
    prior_weight: float = PoissonFlowSampler.prior_weight
    data_variance: float = PoissonFlowSampler.data_variance
    em_iterations: int = PoissonFlowSampler.em_iterations
    cg_iterations: int = ExactDataFlowSampler.cg_iterations
    step_size: float = PnPFlowSampler.step_size
    t_start: float = PoissonFlowSampler.t_start
    perturb: bool = PoissonFlowSampler.perturb
    em_start: str = PoissonFlowSampler.em_start
    choose_strength: bool = True
    first_iterations: int | None = None
    precision: str = "auto"
    weights: str | None = None
    seed: int | None = 0
    gain: float | None = None
    camera_offset: float | None = None
    read_sigma: float | None = None
    keep_samples: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.weights, os.PathLike):  # keep settings plain text (YAML, JSON)
            object.__setattr__(self, "weights", str(os.fspath(self.weights)))
        if self.sampler not in SAMPLERS:
            raise DeconflowError(
                f"Unknown sampler {self.sampler!r}; choose 'poisson' (default), 'exact' or 'pnp'."
            )
        if self.samples < 1:
            raise DeconflowError(f"samples must be >= 1, got {self.samples}.")
        if self.first_iterations is not None and self.first_iterations < 1:
            raise DeconflowError(
                "first_iterations must be >= 1 (or None to choose it by cross-validation), "
                f"got {self.first_iterations}."
            )
        check_precision(self.precision)
        for name in ("gain", "read_sigma"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise DeconflowError(
                    f"{name} must be a finite number > 0 (or None to estimate it), got {value}."
                )
        if self.camera_offset is not None and not math.isfinite(self.camera_offset):
            raise DeconflowError(
                f"camera_offset must be a finite number in ADU (or None to estimate it), got "
                f"{self.camera_offset}."
            )
        self.build_sampler()  # validates the sampler's own fields

    @property
    def total_steps(self) -> int:
        """Prior evaluations of a whole run (all samples)."""
        return self.steps * self.samples

    def build_sampler(self) -> PoissonFlowSampler | ExactDataFlowSampler | PnPFlowSampler:
        """Build the sampler these settings describe."""
        if self.sampler == "pnp":
            return PnPFlowSampler(steps=self.steps, step_size=self.step_size, t_start=self.t_start)
        if self.sampler == "exact":
            return ExactDataFlowSampler(
                steps=self.steps,
                t_start=self.t_start,
                prior_weight=self.prior_weight,
                data_variance=self.data_variance,
                cg_iterations=self.cg_iterations,
                perturb=self.perturb,
            )
        return PoissonFlowSampler(
            steps=self.steps,
            t_start=self.t_start,
            prior_weight=self.prior_weight,
            data_variance=self.data_variance,
            em_iterations=self.em_iterations,
            perturb=self.perturb,
            em_start=self.em_start,
        )
