"""Flow matching: the one time convention of deconflow, the training loss and the prior object.

Time convention (used everywhere in deconflow; nowhere else is it restated):

- ``t = 0`` is noise, ``t = 1`` is data;
- path ``x_t = t x1 + (1 - t) eps`` with ``eps ~ N(0, I)`` and ``x1`` a data volume in prior
  units (see :mod:`deconflow.priors.normalization`);
- velocity target ``dx_t/dt = x1 - eps``; the network learns ``v(x_t, t) ≈ E[x1 - eps | x_t]``;
- denoiser ``D_t(x) = x + (1 - t) v(x, t) ≈ E[x1 | x_t = x]``; the noise still in ``x_t`` has
  standard deviation ``1 - t`` (relative to a data scale of ~1).

A sampler integrates ``dx/dt = v(x, t)`` from ``t = 0`` to ``1``, or re-noises an estimate
``x̂`` to time ``t`` as ``t x̂ + (1 - t) eps`` and denoises it with ``D_t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from deconflow._errors import DeconflowError
from deconflow._validate import check_voxel_size
from deconflow.priors.network import VelocityUNet, flops_per_voxel

__all__ = ["FlowPrior", "cfm_loss", "estimate_loss", "interpolate"]

#: Flow times at which estimate pairs train ``D_t``: around the samplers' ``t_start`` (0.7)
#: and the steps after it, short of 1, where an estimate's flaws are no longer re-noised.
ESTIMATE_TIMES = (0.5, 0.95)
#: ``(1 - t)^2`` at t = 0.7: the estimate loss is a squared denoising error divided by it,
#: which puts it on the velocity loss's scale at the samplers' start.
_ESTIMATE_LOSS_SCALE = 0.09


def _bcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Time as a (B, 1, 1, ...) tensor broadcastable against ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device).reshape(-1)
    return t.expand(like.shape[0]).reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x1: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Point ``x_t = t x1 + (1 - t) eps`` on the linear path."""
    tb = _bcast(t, x1)
    return tb * x1 + (1 - tb) * eps


def cfm_loss(
    network: VelocityUNet,
    x1: torch.Tensor,
    aspect: torch.Tensor | float = 1.0,
    generator: torch.Generator | None = None,
    t_min: float = 0.0,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conditional flow-matching loss (linear path) on a batch of data volumes.

    Parameters
    ----------
    network : VelocityUNet
        The velocity network being trained.
    x1 : torch.Tensor
        Data in prior units, ``(B, 1, [Z,] Y, X)``.
    aspect : torch.Tensor or float
        Voxel aspect (z step / pixel size) per batch item or for all.
    generator : torch.Generator, optional
        For reproducible ``t`` and noise.
    t_min : float
        Times are drawn uniformly from ``[t_min, 1)``: a fine-tune can spend the whole
        budget on the times the samplers use (they start at ``t_start``).
    condition : torch.Tensor, optional
        First estimates of ``x1`` (``x1``'s shape) for a conditioned network.

    Returns
    -------
    torch.Tensor
        Mean squared error between ``v(x_t, t)`` and ``x1 - eps``.
    """
    b = x1.shape[0]
    t = t_min + (1.0 - t_min) * torch.rand(b, generator=generator, device=x1.device)
    eps = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    v = network(interpolate(x1, eps, t), t, aspect, condition)
    return torch.mean((v.float() - (x1 - eps).float()) ** 2)


def estimate_loss(
    network: VelocityUNet,
    truth: torch.Tensor,
    estimate: torch.Tensor,
    aspect: torch.Tensor | float = 1.0,
    generator: torch.Generator | None = None,
    conditioned: bool = False,
) -> torch.Tensor:
    """Denoising loss of ``D_t`` on re-noised first estimates, against the sharp truth.

    The samplers re-noise a data-consistent estimate ``x̂`` (at first a Richardson–Lucy
    one, which keeps some of the blur) to ``x_t = t x̂ + (1 - t) eps`` and ask ``D_t`` for
    the object. Plain flow matching trains ``D_t`` only on ``x̂ = x1``; this loss trains it
    on the samplers' own inputs, so that it also undoes what the estimate left undone.
    With ``estimate = truth`` it is the flow-matching loss weighted by ``(1 - t)^2 / 0.09``.

    Parameters
    ----------
    network : VelocityUNet
        The velocity network being trained.
    truth, estimate : torch.Tensor
        Sharp volumes and their first estimates, ``(P, 1, [Z,] Y, X)``, both in the prior
        units of the estimate's normalisation.
    aspect : torch.Tensor or float
        Voxel aspect per pair or for all.
    generator : torch.Generator, optional
        For reproducible ``t`` and noise.
    conditioned : bool
        Also hand the (clean) estimate to a conditioned network, as the samplers do.

    Returns
    -------
    torch.Tensor
        Mean of ``(D_t(x_t) - truth)^2 / 0.09`` with ``t`` uniform in ``ESTIMATE_TIMES``.
    """
    if truth.shape != estimate.shape:
        raise DeconflowError(
            f"truth {tuple(truth.shape)} and estimate {tuple(estimate.shape)} shapes differ."
        )
    lo, hi = ESTIMATE_TIMES
    b = truth.shape[0]
    t = lo + (hi - lo) * torch.rand(b, generator=generator, device=truth.device)
    eps = torch.randn(truth.shape, generator=generator, device=truth.device, dtype=truth.dtype)
    x_t = interpolate(estimate, eps, t)
    v = network(x_t, t, aspect, estimate if conditioned else None)
    denoised = x_t.float() + _bcast(1 - t, x_t).float() * v.float()
    return torch.mean((denoised - truth.float()) ** 2) / _ESTIMATE_LOSS_SCALE


@dataclass
class FlowPrior:
    """A trained flow-matching prior for volumes of one voxel aspect.

    Parameters
    ----------
    network : VelocityUNet
        Trained (EMA) network; it is put in eval mode and frozen.
    voxel_aspect : float
        z step over pixel size of the volumes this prior will see; 2D inputs
        (``(Y, X)``, ``(B, 1, Y, X)``) always run with aspect 1, as in training.
    card : dict
        Model card of the weights (provenance), possibly empty.
    compute_dtype : torch.dtype
        ``torch.float32``, or ``torch.bfloat16`` to run the network under bfloat16
        autocast (2-3x faster where the hardware supports it, outputs within ~0.3 % of
        float32; see :func:`~deconflow._device.resolve_precision`). Inputs and outputs keep
        their own dtype either way.

    Notes
    -----
    Inputs and outputs are in prior units: apply a
    :class:`~deconflow.priors.normalization.Normalization` first and invert it after.
    Tensors may be spatial only (``(Z, Y, X)`` / ``(Y, X)``) or ``(B, 1, [Z,] Y, X)``.
    Gradients flow through the network only when the input requires them.

    A :attr:`conditioned` prior models ``p(x | first estimate)``: :meth:`velocity` and
    :meth:`denoise` then need ``condition``, the samplers' first (Richardson–Lucy)
    estimate in ``x_t``'s region and shape; an unconditioned prior ignores it.
    """

    network: VelocityUNet
    voxel_aspect: float = 1.0
    card: dict[str, object] = field(default_factory=dict)
    compute_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.compute_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype}")
        self.network.eval()
        self.network.requires_grad_(False)

    def for_voxel_size(self, voxel_size_um: Sequence[float]) -> FlowPrior:
        """Return the same prior told the aspect of ``(z, y, x)`` voxel sizes (2D: aspect 1).

        Raises
        ------
        DeconflowError
            Unless the sizes are 2 or 3 positive finite micrometres.
        """
        if len(voxel_size_um) not in (2, 3):
            raise DeconflowError(
                f"voxel_size_um {tuple(voxel_size_um)} has {len(voxel_size_um)} entries; give "
                "(z, y, x) for a volume or (y, x) for a plane, in micrometres."
            )
        # a zero or negative z step would make log(aspect) NaN and every velocity NaN
        sizes = check_voxel_size(voxel_size_um, len(voxel_size_um), "voxel_size_um")
        assert sizes is not None  # not None in, not None out
        aspect = sizes[0] / sizes[-1] if len(sizes) == 3 else 1.0
        return replace(self, voxel_aspect=aspect)

    def to(self, device: torch.device | str) -> FlowPrior:
        """Move the network to ``device`` (in place) and return self."""
        self.network.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the network's weights."""
        return next(self.network.parameters()).device

    @property
    def conditioned(self) -> bool:
        """Whether the network takes the first estimate as a second input."""
        return self.network.config.conditioned

    @property
    def flops_per_voxel(self) -> float:
        """FLOP per voxel for one evaluation of :meth:`velocity`."""
        return flops_per_voxel(self.network)

    def _condition(self, condition: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """Return the condition as the network takes it (``like``'s shape), or ``None``."""
        if not self.conditioned:
            return None
        if condition is None:
            raise DeconflowError(
                "These prior weights are conditioned on the first estimate; run them through "
                "a flow sampler with t_start > 0 (which computes it), or load unconditioned "
                "weights."
            )
        if like.ndim == 4:
            raise DeconflowError(
                "Conditioned prior weights are trained on 3D stacks only; deconvolve a 2D "
                "image with unconditioned weights (the default)."
            )
        cond = condition.reshape(like.shape[-3:]) if condition.ndim == 3 else condition
        return cond.to(like.device, like.dtype).expand_as(like)

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity ``v(x_t, t)`` (``t = 0`` noise, ``t = 1`` data), same shape as ``x_t``.

        Parameters
        ----------
        x_t : torch.Tensor
            Current state in prior units, on the prior's device.
        t : float or torch.Tensor
            Time in [0, 1], scalar or one per batch item.
        condition : torch.Tensor, optional
            First estimate (prior units) in ``x_t``'s shape, or one volume ``(Z, Y, X)``
            for the whole batch; needed by a conditioned prior, ignored otherwise.

        Returns
        -------
        torch.Tensor
            The velocity, in ``x_t``'s shape and dtype.

        Raises
        ------
        DeconflowError
            If a conditioned prior gets no condition or a 2D input.
        """
        spatial = x_t.ndim in (2, 3)
        x = (x_t[None, None] if spatial else x_t).float()
        cond = self._condition(condition, x)
        # a plane runs the 2D path, which training only ever told aspect 1
        aspect = 1.0 if x.ndim == 4 else self.voxel_aspect
        low = self.compute_dtype == torch.bfloat16
        if low and x.device.type == "cpu" and x.ndim == 5:
            # oneDNN's bfloat16 convolutions are ~1.4x faster channels-last
            x = x.contiguous(memory_format=torch.channels_last_3d)
            if cond is not None:
                cond = cond.contiguous(memory_format=torch.channels_last_3d)
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad),
            torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low),
        ):
            v = self.network(x, t, aspect, cond)
        v = v.to(x_t.dtype).contiguous()
        return v[0, 0] if spatial else v

    def denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser ``D_t(x_t) = x_t + (1 - t) v(x_t, t)``, the estimate of the data ``x1``.

        ``condition`` as in :meth:`velocity`.
        """
        v = self.velocity(x_t, t, condition)
        spatial = x_t.ndim in (2, 3)
        tb = _bcast(t, x_t[None, None] if spatial else x_t)
        return x_t + (1 - (tb[0, 0] if spatial else tb)) * v

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int],
        steps: int = 20,
        generator: torch.Generator | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw from the prior by Euler integration of the ODE from noise (for inspection).

        Parameters
        ----------
        shape : sequence of int
            ``(B, 1, [Z,] Y, X)``.
        steps : int
            Euler steps from t = 0 to 1.
        generator : torch.Generator, optional
            Seeded generator on the prior's device.
        condition : torch.Tensor, optional
            First estimate for a conditioned prior (as in :meth:`velocity`).

        Returns
        -------
        torch.Tensor
            Samples in prior units.
        """
        x = torch.randn(tuple(shape), generator=generator, device=self.device)
        for i in range(steps):
            x = x + self.velocity(x, i / steps, condition) / steps
        return x
