"""When to stop fitting the data: cross-validation on thinned photon counts.

Richardson–Lucy-type iterations first recover structure, then start fitting the
noise; the best iteration depends on the photon count, the PSF and the object, and
a fixed number can be off by 2–3 dB either way (measured on the issue-7 benchmark:
the best count ranged from 5 to 67). The data themselves can tell, because Poisson
counts split exactly: if ``z ~ Poisson(mu)``, drawing ``z1 ~ Binomial(z, p)`` gives
``z1 ~ Poisson(p mu)`` and ``z2 = z - z1 ~ Poisson((1 - p) mu)``, **independent** of
each other. Iterating on ``z1`` and scoring each iterate by how well it predicts
``z2`` (its Poisson negative log-likelihood) picks the iteration that generalises,
with no ground truth and no noise-level threshold. A discrepancy-principle stop
(deviance per voxel < 1), by contrast, cost sparse beads 2.4 dB on the same benchmark.

How an iterate is scored decides *which* error the stop minimises. The Poisson
likelihood of the held-out counts measures the error of the *blurred* estimate, in which
the fine detail the PSF damps hardly counts; the object's error is dominated by that
detail, so the likelihood stops early on sharp, sparse structure (11 iterations where 19
were best on beaded rings under a confocal PSF at 1000 photons, 1.8 dB lost). The default
score instead deconvolves the held-out residual with a regularised inverse
``W = H^T (H^T H + eps max|OTF|^2)^-1`` and takes its squared norm: for any fixed ``W``,
``E||W (z2 - (1 - p) (H x + c))||^2 = ||W H (x_true - x)||^2 (1 - p)^2 + const``, with the
constant (the noise) the same for every iterate, so the stop minimises the error of the
object itself wherever the OTF exceeds about ``sqrt(eps)`` of its peak. Measured on the
27 cases of ``benchmarks/bench_flow_quality.py`` (RL on photons, three fold seeds): the
likelihood score lost 0.25-0.26 dB to the oracle stop on average (worst 1.81 dB), the
deconvolved score with ``eps = 1e-3`` 0.09-0.11 dB (worst 0.81 dB; ``stopping.md``); ``eps = 1e-2``
lost 0.18 dB and ``1e-4`` 0.17-0.19 dB, the first by weighting the detail too little, the
second by amplifying the held-out noise at the edge of the passband. With a slightly wrong
PSF (18 cases: widefield NA 1.2 data deconvolved as NA 1.1 or 1.3, the measured bead PSF
replaced by its theoretical model) the deblurred score lost 0.10 dB (worst 0.60 dB) and
the likelihood 0.35 dB (worst 2.09 dB). ``benchmarks/bench_stopping.py`` measures both.

Counts must be integers for the binomial split; shifted-Poisson counts (photons plus
the read-noise variance) are rounded first, which changes their variance by 1/12 of a
photon squared.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch

from deconflow._errors import DeconflowError
from deconflow.physics.blur import ConvolutionOperator
from deconflow.physics.likelihoods import PoissonLikelihood
from deconflow.solvers._schedule import check_at_least_one, check_positive
from deconflow.solvers.richardson_lucy import RichardsonLucy

_Value = TypeVar("_Value")

__all__ = [
    "DEBLUR_REGULARIZATION",
    "HOLDOUT_SCORES",
    "CrossValidatedStop",
    "DeblurredHeldOutError",
    "HoldoutScore",
    "heldout_nll",
    "split_counts",
]

#: How :class:`CrossValidatedStop` scores an iterate against the held-out counts.
HoldoutScore = Literal["deblurred", "poisson"]
HOLDOUT_SCORES: tuple[HoldoutScore, ...] = ("deblurred", "poisson")
#: ``eps`` of the deblurred score, relative to the OTF's peak power (module docstring).
DEBLUR_REGULARIZATION = 1e-3


def split_counts(
    counts: np.ndarray, keep: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split photon counts into two independent Poisson images (binomial thinning).

    Parameters
    ----------
    counts : numpy.ndarray
        Photon counts ``z >= 0``; rounded to integers.
    keep : float
        Share ``p`` in (0, 1) of the expected counts that goes to the first image.
    rng : numpy.random.Generator
        Source of the split.

    Returns
    -------
    kept, held_out : numpy.ndarray
        float32 images with ``kept + held_out == round(counts)``; for
        ``z ~ Poisson(mu)`` they are independent ``Poisson(p mu)`` and
        ``Poisson((1 - p) mu)``.
    """
    if not 0.0 < keep < 1.0:
        raise DeconflowError(f"keep must be in (0, 1), got {keep}.")
    whole = np.rint(np.clip(counts, 0.0, None)).astype(np.int64)
    kept = rng.binomial(whole, keep)
    return kept.astype(np.float32), (whole - kept).astype(np.float32)


def heldout_nll(
    held: torch.Tensor,
    blurred_kept: torch.Tensor,
    kept_background: float,
    holdout: float,
) -> float:
    """Poisson negative log-likelihood of held-out counts under an estimate from the kept ones.

    Parameters
    ----------
    held : torch.Tensor
        The held-out counts (float64: near a minimum the score moves by less than a
        float32 sum's rounding over millions of voxels).
    blurred_kept : torch.Tensor
        ``H x`` of an estimate ``x`` made from the kept counts (image domain).
    kept_background : float
        The kept counts' background, ``(1 - holdout) * c``.
    holdout : float
        Share of the photons held out; the kept prediction is scaled by
        ``holdout / (1 - holdout)`` to the held-out counts' expectation.

    Returns
    -------
    float
        The score (lower predicts the held-out photons better).
    """
    predicted = (blurred_kept + kept_background) * (holdout / (1.0 - holdout))
    return float(PoissonLikelihood().value(held, predicted.double()).item())


class DeblurredHeldOutError:
    """Squared norm of the held-out residual after a regularised inverse of the blur.

    ``score = ||W (held - holdout / (1 - holdout) (H x + kept_background))||^2`` with
    ``W = H^T (H^T H + eps max|OTF|^2)^-1``, computed on the operator's FFT grid in
    float64. Its expectation over the held-out noise is the error of ``x`` within the
    OTF's passband plus a constant (module docstring), so lower is a better object.

    Parameters
    ----------
    operator : ConvolutionOperator
        ``H`` of the held-out counts' window.
    regularization : float
        ``eps`` (> 0), relative to the OTF's peak power.
    """

    def __init__(self, operator: ConvolutionOperator, regularization: float) -> None:
        check_positive(regularization=regularization)
        otf = operator.otf.to(torch.complex128)
        power = otf.real.square() + otf.imag.square()
        self._inverse = otf.conj() / (power + regularization * float(power.max().item()))
        self._fft_shape = operator.fft_shape
        self._dims = tuple(range(-operator.ndim, 0))

    def __call__(
        self,
        held: torch.Tensor,
        blurred_kept: torch.Tensor,
        kept_background: float,
        holdout: float,
    ) -> float:
        """Score an estimate; arguments as :func:`heldout_nll` (``held`` in float64)."""
        predicted = (blurred_kept.double() + kept_background) * (holdout / (1.0 - holdout))
        spectrum = torch.fft.rfftn(held - predicted, s=self._fft_shape, dim=self._dims)
        spectrum *= self._inverse
        deblurred = torch.fft.irfftn(spectrum, s=self._fft_shape, dim=self._dims)
        return float(deblurred.square().sum().item())


@dataclass(frozen=True)
class CrossValidatedStop:
    """Choose a Richardson–Lucy iteration count by K-fold hold-out of photon counts.

    Each fold keeps a random ``1 - holdout`` of the photons, runs RL on them and
    scores every iterate ``x_k`` against the held-out photons' prediction
    ``holdout / (1 - holdout) * (H x_k + keep * c)``: by default the deblurred squared
    error (:class:`DeblurredHeldOutError`), or their Poisson negative log-likelihood.
    The curves of all folds are summed and the iteration at their minimum is the
    answer. A fold stops ``patience`` iterations after its last improvement.

    Why these defaults, measured on the 27 cases of ``benchmarks/bench_flow_quality.py``
    (RL on photon counts, against RL stopped at its truly best iteration; the score: the
    module docstring) with the Poisson score: holding out
    20 % in 3 folds lost 0.25 dB on average (worst case 1.8 dB, sparse beads under
    a confocal PSF at 1000 photons, where it stops early); 10 % lost 0.29 dB (worst
    1.4 dB); 50 % in 2 folds lost 0.31 dB (worst 2.3 dB); 8 folds lost 0.23-0.26 dB
    over two seeds (worst 1.8 dB, the same case), so the losses are the hold-out's bias
    on those stacks, not its noise (the bias the deblurred score removes: 0.10 dB lost,
    worst 0.73-0.81 dB over three seeds, with these holdout and folds). Scaling the count
    from 80 % of the photons to all of them (x1.25, x1.5) lost 0.45 and 0.83 dB. The best
    count itself ranged from 5 to 67 iterations over those cases.

    Parameters
    ----------
    holdout : float
        Share of the photons held out per fold, in (0, 1).
    folds : int
        Number of random splits.
    max_iterations : int
        Largest count considered.
    patience : int
        Iterations without a new minimum after which a fold stops.
    accelerate : bool
        Count accelerated (Biggs–Andrews) iterations, as :class:`RichardsonLucy` runs them.
    seed : int
        Seed of the splits (the choice is reproducible).
    score : {"deblurred", "poisson"}
        How an iterate is scored against the held-out photons (module docstring).
    regularization : float
        ``eps`` of the deblurred score (:class:`DeblurredHeldOutError`).
    """

    holdout: float = 0.2
    folds: int = 3
    max_iterations: int = 80
    patience: int = 10
    accelerate: bool = True
    seed: int = 0
    score: HoldoutScore = "deblurred"
    regularization: float = DEBLUR_REGULARIZATION

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise DeconflowError(f"holdout must be in (0, 1), got {self.holdout}.")
        check_at_least_one(
            folds=self.folds, max_iterations=self.max_iterations, patience=self.patience
        )
        check_positive(regularization=self.regularization)
        if self.score not in HOLDOUT_SCORES:
            raise DeconflowError(
                f"Unknown score {self.score!r}; choose 'deblurred' (default) or 'poisson'."
            )

    def holdout_curve(
        self, counts: torch.Tensor, operator: ConvolutionOperator, background: float
    ) -> np.ndarray:
        """Held-out score summed over folds, per iteration (1, 2, ...).

        Parameters
        ----------
        counts : torch.Tensor
            Photon counts, shape ``operator.image_shape``.
        operator : ConvolutionOperator
            Forward model ``H``.
        background : float
            Background ``c > 0`` in photons.

        Returns
        -------
        numpy.ndarray
            One value per iteration, as long as the shortest fold ran.
        """
        return _last_value(self.iter_holdout_curve(counts, operator, background))

    def iter_holdout_curve(
        self, counts: torch.Tensor, operator: ConvolutionOperator, background: float
    ) -> Generator[tuple[int, int], None, np.ndarray]:
        """Yield ``(fold, iteration)`` (from 0) after each RL iteration; return the curve.

        :meth:`holdout_curve` as a generator, so that a caller reports progress and can
        stop between iterations: on a 16×48×48 stack the choice took 1.9 s of a 6.6 s flow
        run, during which the napari widget showed no progress and its Cancel waited.
        """
        if not background > 0:
            raise DeconflowError(f"background must be > 0 photons, got {background}.")
        keep = 1.0 - self.holdout
        rng = np.random.default_rng(self.seed)
        whole = counts.detach().cpu().numpy()
        score = (
            DeblurredHeldOutError(operator, self.regularization)
            if self.score == "deblurred"
            else heldout_nll
        )
        curves: list[list[float]] = []
        for fold in range(self.folds):
            kept_np, held_np = split_counts(whole, keep, rng)
            kept = torch.from_numpy(kept_np).to(counts.device)
            held = torch.from_numpy(held_np).to(counts.device).double()
            solver = RichardsonLucy(self.max_iterations, accelerate=self.accelerate)
            curve: list[float] = []
            best, since = np.inf, 0
            for x in solver.iterate(kept, operator, keep * background):
                value = score(held, operator.A(x), keep * background, self.holdout)
                curve.append(value)
                yield fold, len(curve) - 1
                best, since = (value, 0) if value < best else (best, since + 1)
                if since >= self.patience:
                    break
            curves.append(curve)
        length = min(len(curve) for curve in curves)
        return np.sum([curve[:length] for curve in curves], axis=0)

    def iterations(
        self, counts: torch.Tensor, operator: ConvolutionOperator, background: float
    ) -> int:
        """Return the chosen iteration count (>= 1); arguments as :meth:`holdout_curve`."""
        return _last_value(self.iter_iterations(counts, operator, background))

    def iter_iterations(
        self, counts: torch.Tensor, operator: ConvolutionOperator, background: float
    ) -> Generator[tuple[int, int], None, int]:
        """:meth:`iterations` as a generator, yielding as :meth:`iter_holdout_curve` does."""
        curve = yield from self.iter_holdout_curve(counts, operator, background)
        return int(np.argmin(curve)) + 1


def _last_value(steps: Generator[object, None, _Value]) -> _Value:
    """Run a generator to its end and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            value: _Value = done.value
            return value
