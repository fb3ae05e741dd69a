"""Training pairs for the prior: generated sharp volumes and first estimates of their images.

The flow samplers hand the prior a re-noised Richardson–Lucy estimate, which keeps part
of the blur (the missing cone of a widefield PSF above all); plain flow matching only ever
shows ``D_t`` re-noised *sharp* volumes. A pair is what a sampler meets: a generated
volume, imaged through a theoretical PSF drawn from a broad range of objectives, with
Poisson photons and read noise, then Richardson–Lucy as the first estimate. Training
(``deconflow train --estimate-pairs``) mixes such pairs into each batch
(:func:`~deconflow.priors.flow.estimate_loss`).

Why here: a pair needs the forward model, a theoretical PSF, the prior's generator and
normalisation, and Richardson–Lucy, so it sits with the solvers, above all of those.
Training imports it only when a run asks for pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from deconflow._errors import DeconflowError
from deconflow.physics.blur import ConvolutionOperator
from deconflow.priors.data import Batch, EstimatePairs, GeneratorSource
from deconflow.priors.generator import generate_volume, log_uniform
from deconflow.priors.normalization import fit_normalization
from deconflow.psf.theoretical import confocal_psf, widefield_psf
from deconflow.solvers.richardson_lucy import RichardsonLucy

__all__ = ["EstimatePairSource", "draw_psf"]

#: Immersion media with the refractive index and the NA range of their objectives.
_IMMERSIONS = (("air", 1.0, (0.7, 0.95)), ("water", 1.33, (0.9, 1.25)), ("oil", 1.515, (1.2, 1.45)))
#: Largest PSF kernel (z, y, x) in voxels, as the flow benchmark cuts its PSFs.
_KERNEL_CAP = (21, 31, 31)


def draw_psf(
    kernel: tuple[int, int, int],
    voxel_size_um: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, str]:
    """Draw a theoretical PSF (sum 1) of a random objective and modality.

    Half widefield, half confocal (pinhole 1 AU); the immersion (air, water or oil) is
    drawn evenly and the NA within its objectives' range; emission 480–650 nm, confocal
    excitation 20–60 nm below it.

    Parameters
    ----------
    kernel : tuple of int
        PSF shape ``(z, y, x)`` (odd sizes).
    voxel_size_um : tuple of float
        ``(z, y, x)`` in µm.
    rng : numpy.random.Generator
        Random stream.

    Returns
    -------
    psf : numpy.ndarray
        The PSF, normalised to sum 1.
    description : str
        E.g. ``"confocal water NA1.12 520nm"``.
    """
    medium, n, (na_lo, na_hi) = _IMMERSIONS[int(rng.integers(len(_IMMERSIONS)))]
    na = float(rng.uniform(na_lo, na_hi))
    emission = float(rng.uniform(480.0, 650.0))
    if rng.uniform() < 0.5:
        psf = widefield_psf(
            kernel, voxel_size_um, na=na, wavelength_nm=emission, refractive_index=n
        )
        modality = "widefield"
    else:
        psf = confocal_psf(
            kernel,
            voxel_size_um,
            na=na,
            excitation_wavelength_nm=emission - float(rng.uniform(20.0, 60.0)),
            emission_wavelength_nm=emission,
            refractive_index=n,
        )
        modality = "confocal"
    psf = psf.astype(np.float32)
    return psf / psf.sum(), f"{modality} {medium} NA{na:.2f} {emission:.0f}nm"


def _fit_psf(psf: np.ndarray, kernel: tuple[int, int, int]) -> np.ndarray:
    """Return ``psf`` cropped around its centre to at most ``kernel``, float32, sum 1."""
    if psf.ndim != 3 or not np.all(np.isfinite(psf)) or not float(psf.sum()) > 0:
        raise DeconflowError(
            f"The PSF for estimate pairs must be a finite 3D stack with positive sum, got "
            f"shape {psf.shape}."
        )
    index = tuple(
        slice(max(0, (n - k) // 2), max(0, (n - k) // 2) + min(n, k))
        for n, k in zip(psf.shape, kernel, strict=True)
    )
    cropped = np.asarray(psf[index], dtype=np.float32)
    return cropped / cropped.sum()


class EstimatePairSource:
    """Batches that mix flow-matching volumes with (sharp, first estimate) pairs.

    A pair: a generated volume on the operator's whole object domain (so that light from
    outside the window blurs in, as in a real stack), at a pixel size and voxel aspect
    drawn log-uniformly, imaged through :func:`draw_psf`'s PSF at a peak of 15–2,000
    photons (by default; log-uniform) over 0.5–5 photons of haze, with 0–2 photons of
    read noise; then Richardson–Lucy for 5–40 (accelerated) iterations on the
    shifted-Poisson counts, as deconflow's first estimate runs. Truth and estimate are
    cropped to the window, normalised by the *estimate's*
    :func:`~deconflow.priors.normalization.fit_normalization` (as inference normalises)
    and flipped alike in-plane.

    Parameters
    ----------
    patch : sequence of int
        ``(z, y, x)`` window of both kinds of item.
    share : float
        Expected share of each 3D batch that is pairs, in ``(0, 1]``; a batch holds
        ``floor(share * batch + u)`` of them with ``u`` uniform, so small batches keep
        the share on average. Plane steps (2D) draw no pairs.
    pixel_um_range, aspect_range : tuple of float
        Pixel sizes (µm) and voxel aspects (z step / pixel) of the pairs, log-uniform.
    iteration_range : tuple of int
        Richardson–Lucy iterations of the first estimate, uniform (inclusive).
    peak_photon_range : tuple of float
        Photons at the object's brightest voxel before blurring, log-uniform.
    psf : numpy.ndarray, optional
        One microscope's PSF (3D, sampled at ``voxel_size_um``) to image every pair
        through instead of :func:`draw_psf`'s mix; a PSF larger than the patch allows
        (``patch - 1``, at most ``(21, 31, 31)``) is cropped around its centre. The pairs
        then all have that voxel size, and ``pixel_um_range`` and ``aspect_range`` are
        not used.
    voxel_size_um : tuple of float, optional
        ``(z, y, x)`` µm of the stacks ``psf`` belongs to; required with ``psf``.
    """

    def __init__(
        self,
        patch: Sequence[int] = (16, 64, 64),
        share: float = 0.5,
        pixel_um_range: tuple[float, float] = (0.07, 0.16),
        aspect_range: tuple[float, float] = (1.5, 4.0),
        iteration_range: tuple[int, int] = (5, 40),
        peak_photon_range: tuple[float, float] = (15.0, 2000.0),
        psf: np.ndarray | None = None,
        voxel_size_um: tuple[float, float, float] | None = None,
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise DeconflowError(f"The share of estimate pairs must be in (0, 1], got {share}.")
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) != 3 or min(self.patch) < 2:
            raise DeconflowError(f"Estimate pairs need a 3D patch of sizes >= 2, got {patch}.")
        self.share = float(share)
        self.pixel_um_range = pixel_um_range
        self.aspect_range = aspect_range
        self.iteration_range = iteration_range
        self.peak_photon_range = peak_photon_range
        kz, ky, kx = (min(n - 1, cap) | 1 for n, cap in zip(self.patch, _KERNEL_CAP, strict=True))
        self.kernel = (kz, ky, kx)
        self._sharp = GeneratorSource(self.patch)
        self.voxel_size_um = voxel_size_um
        self.psf = None if psf is None else _fit_psf(psf, self.kernel)
        if self.psf is not None and (voxel_size_um is None or len(voxel_size_um) != 3):
            raise DeconflowError(
                "Estimate pairs through one PSF need the (z, y, x) voxel size in µm of the "
                f"stacks it belongs to, got {voxel_size_um}."
            )

    def describe(self) -> str:
        """One line for the model card."""
        if self.psf is not None:
            optics = f"at voxel {self.voxel_size_um} µm, blurred by the given {self.psf.shape} PSF"
        else:
            optics = (
                f"at pixel {self.pixel_um_range} µm and voxel aspect {self.aspect_range}, "
                f"blurred by {self.kernel} theoretical PSFs (widefield/confocal, air/water/oil)"
            )
        return (
            f"{self._sharp.describe()}; {self.share:.0%} of each 3D batch estimate pairs "
            f"(deconflow.solvers.estimate_pairs): generated volumes {optics}, peak "
            f"{self.peak_photon_range[0]:g}-{self.peak_photon_range[1]:g} photons, then "
            f"Richardson-Lucy {self.iteration_range[0]}-{self.iteration_range[1]} iterations"
        )

    def sample(self, batch: int, rng: np.random.Generator, plane: bool = False) -> Batch:
        """Draw a batch: flow-matching items in ``x1``, estimate pairs in ``pairs``."""
        if plane:
            return self._sharp.sample(batch, rng, plane=True)
        n_pairs = min(batch, int(np.floor(self.share * batch + rng.uniform())))
        if n_pairs < batch:
            sharp = self._sharp.sample(batch - n_pairs, rng)
        else:
            sharp = Batch(torch.zeros((0, 1, *self.patch)), torch.zeros(0))
        if not n_pairs:
            return sharp
        drawn = [self.pair(rng) for _ in range(n_pairs)]
        pairs = EstimatePairs(
            torch.from_numpy(np.stack([d[0] for d in drawn])[:, None]),
            torch.from_numpy(np.stack([d[1] for d in drawn])[:, None]),
            torch.tensor([d[2] for d in drawn]),
        )
        return Batch(sharp.x1, sharp.aspect, pairs)

    def pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """Draw one ``(truth, estimate, aspect)``, both volumes float32 in prior units."""
        if self.psf is not None and self.voxel_size_um is not None:
            psf, voxel = self.psf, self.voxel_size_um
            aspect = voxel[0] / voxel[2]
        else:
            aspect = log_uniform(rng, *self.aspect_range)
            pixel = log_uniform(rng, *self.pixel_um_range)
            voxel = (aspect * pixel, pixel, pixel)
            psf, _ = draw_psf(self.kernel, voxel, rng)
        op = ConvolutionOperator(psf, self.patch, dtype=torch.float32)
        obj = generate_volume(op.object_shape, voxel, rng).astype(np.float32)
        obj *= log_uniform(rng, *self.peak_photon_range) / max(float(obj.max()), 1e-12)
        haze = float(rng.uniform(0.5, 5.0))
        read = float(rng.uniform(0.0, 2.0))
        mean = op.A(torch.from_numpy(obj)).numpy() + haze
        counts = rng.poisson(np.clip(mean, 0.0, None)) + rng.normal(0.0, read, mean.shape)
        # shifted Poisson (counts + read^2 ~ Poisson(mean + read^2)), as the first estimate
        shifted = torch.from_numpy((counts + read**2).astype(np.float32))
        iterations = int(rng.integers(self.iteration_range[0], self.iteration_range[1] + 1))
        estimate = RichardsonLucy(iterations)(shifted, op, haze + read**2)
        estimate_np = op.crop_to_image(estimate).numpy()
        truth = op.crop_to_image(torch.from_numpy(obj)).numpy()
        norm = fit_normalization(estimate_np)
        pair = [norm.apply(truth), norm.apply(estimate_np)]
        for axis in (1, 2):  # in-plane flips only: z is not symmetric optically
            if rng.uniform() < 0.5:
                pair = [np.flip(v, axis) for v in pair]
        truth_n, estimate_n = (np.ascontiguousarray(v, dtype=np.float32) for v in pair)
        return truth_n, estimate_n, aspect
