"""How far the flow trusts its prior, chosen per stack from held-out photons.

Why: the prior's reliability differs from stack to stack. On the issue-7 benchmark's
9-case subset, starting each step's EM at the prior's estimate won 1.4 dB on one stack
(membranes, confocal, 100 photons) and lost up to 2.2 dB on others, and a higher prior
weight helped the real-derived grid and hurt sparse beads. The data can tell which to
use, as they tell the first estimate when to stop (:mod:`deconflow.solvers.stopping`):
split the photons of a window into independent 80 % and 20 % parts (binomial thinning),
run each candidate on the 80 %, and keep the one whose estimate predicts the 20 % best.
With the choice the flow's gain over oracle RL rose from +0.45 to +0.73 dB on that subset
and from +0.51 to +0.69 dB on all 27 cases (with the CPU-trained weights;
``docs/how-it-works.md``). The prediction is scored as the first estimate's stop scores
it, by the held-out residual deblurred with a regularised inverse
(:class:`~deconflow.solvers.stopping.DeblurredHeldOutError`): the Poisson likelihood,
scored before, weighs the blurred estimate, and with the deblurred score the gain on all
27 cases rose from +0.88 to +0.91 dB (mean of 4 samples). The held-out photons see only
what the PSF passes, so the choice is blind to detail the optics remove.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import numpy as np
import torch

from deconflow._flow_run import brightest_window
from deconflow._progress import Progress
from deconflow.physics.blur import ConvolutionOperator
from deconflow.priors.normalization import Normalization
from deconflow.solvers._schedule import Denoiser
from deconflow.solvers.flow import FlowDeconvolution
from deconflow.solvers.poisson_flow import PoissonFlowSampler, PoissonMeasurement
from deconflow.solvers.richardson_lucy import RichardsonLucy
from deconflow.solvers.stopping import (
    DEBLUR_REGULARIZATION,
    DeblurredHeldOutError,
    split_counts,
)

__all__ = ["StrengthChoice", "iter_choose_strength", "strength_candidates"]

#: Share of the window's photons held out to score the candidates.
_HOLDOUT = 0.2
#: Largest window (z, y, x) the candidates run on: three short flow runs there cost ~12 s
#: of a default 64×256×256 run's ~84 s on the 2-core CPU (profiled 2026-11-28).
_WINDOW = (32, 96, 96)


@dataclasses.dataclass(frozen=True)
class StrengthChoice:
    """The candidate kept and every candidate's held-out score (lower is better)."""

    name: str
    settings: FlowDeconvolution
    scores: dict[str, float]

    def note(self) -> str:
        """One line for the result's notes: the choice and each candidate's score."""
        scores = ", ".join(
            f"{name} {score - self.scores['as set']:+.1f}" for name, score in self.scores.items()
        )
        return (
            f"prior strength: {self.name}, chosen by held-out photons (their deblurred "
            f"squared error relative to the settings as set: {scores})"
        )


def strength_candidates(settings: FlowDeconvolution) -> dict[str, FlowDeconvolution]:
    """Return the settings as given, then prior-led and stronger-prior variants, in order."""
    return {
        "as set": settings,
        "prior-led": dataclasses.replace(
            settings, em_start="prior", em_iterations=max(15, settings.em_iterations)
        ),
        "stronger prior": dataclasses.replace(
            settings, prior_weight=settings.prior_weight * 10 / 3
        ),
    }


def iter_choose_strength(
    counts: np.ndarray,
    psf: np.ndarray,
    background: float,
    first_iterations: int,
    normalization: Normalization,
    gain: float,
    prior: Denoiser,
    settings: FlowDeconvolution,
    device: torch.device,
) -> Generator[Progress, None, StrengthChoice]:
    """Score :func:`strength_candidates` on held-out photons of ``counts``; keep the best.

    A generator, as the pipeline's stages are: it yields a ``Progress`` event (stage
    ``"estimate"``) after each step of each candidate, so that the widget's bar and the
    CLI's status move through the choice (tens of seconds on a CPU) instead of resting
    on the first estimate's last step, and returns the choice.

    The candidates run on the brightest window of ``counts`` (at most ``_WINDOW``), as
    the first estimate's stop is cross-validated on its brightest window.

    Parameters
    ----------
    counts : numpy.ndarray
        Shifted-Poisson photon counts of the stack.
    psf : numpy.ndarray
        The prepared PSF.
    background : float
        Background of ``counts`` in photons (> 0).
    first_iterations : int
        RL iterations of the first estimate (as for the whole stack).
    normalization : Normalization
        The prior's intensity normalisation, in the image's units above the background.
    gain : float
        ADU per photon (the normalisation is in ADU).
    prior : Denoiser
        The flow prior.
    settings : FlowDeconvolution
        The run's settings (Poisson sampler).
    device : torch.device
        Where to compute.

    Yields
    ------
    Progress
        ``step`` of ``total`` = candidates × flow steps.

    Returns
    -------
    StrengthChoice
        The best candidate (ties keep the earlier one, so the settings as given win
        them).
    """
    keep = 1.0 - _HOLDOUT
    seed = settings.seed if settings.seed is not None else 0
    window = counts[brightest_window(counts, psf.shape, _WINDOW)]
    kept_np, held_np = split_counts(window, keep, np.random.default_rng(seed))
    kept = torch.from_numpy(kept_np).to(device)
    held = torch.from_numpy(held_np).to(device).double()
    operator = ConvolutionOperator(psf, window.shape, device=device, dtype=torch.float32)
    level = keep * background
    first = RichardsonLucy(first_iterations)(kept, operator, level)
    # Start the candidates where the full run starts its samples: from the estimate inside
    # the window, edge-extended over the margin. Started from RL's own estimate of the margin
    # instead, the prior-led candidate won on widefield membranes and then ran 0.8 dB worse
    # than the settings as given from the full run's starting point.
    first = operator.extend_image(operator.crop_to_image(first))
    # the kept photons are a `keep` share of the stack's, and so is the prior's scale
    model = PoissonMeasurement(
        operator,
        kept,
        torch.tensor(level, dtype=torch.float32, device=device),
        scale=keep * normalization.scale / gain,
        offset=keep * normalization.offset / gain,
    )
    initial = model.to_prior(first)
    score = DeblurredHeldOutError(operator, DEBLUR_REGULARIZATION)
    scores: dict[str, float] = {}
    candidates = strength_candidates(settings)
    total = sum(candidate.steps for candidate in candidates.values())
    done = 0
    for number, (name, candidate) in enumerate(candidates.items(), start=1):
        sampler = candidate.build_sampler()
        if not isinstance(sampler, PoissonFlowSampler):
            raise TypeError("the prior's strength is chosen for the Poisson sampler only")
        generator = torch.Generator().manual_seed(seed)
        estimate = initial
        for step, latest in enumerate(sampler.iterate(model, prior, generator, initial), 1):
            estimate, done = latest, done + 1
            yield Progress(
                "estimate",
                done,
                total,
                f"choosing how far to trust the prior: candidate {number}/{len(candidates)} "
                f"({name}) step {step}",
            )
        photons = model.to_photons(estimate).clamp_min(0.0)
        scores[name] = score(held, operator.A(photons), level, _HOLDOUT)
    best = min(scores, key=lambda name: scores[name])
    return StrengthChoice(best, candidates[best], scores)
