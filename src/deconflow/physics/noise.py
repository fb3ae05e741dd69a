"""Quick estimates of background level and noise from the measured stack itself."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from deconflow._errors import DeconflowError, DeconflowWarning
from deconflow.physics._clipping import (
    censored_gaussian,
    clipped_floor,
    near_clipping,
    saturated_voxels,
)
from deconflow.physics._out_of_band import out_of_band_variance

__all__ = [
    "CameraNoise",
    "estimate_background",
    "estimate_camera_noise",
    "estimate_noise_sigma",
    "floor_clipped_voxels",
    "saturated_voxels",
]

#: Share (percent) of voxels with the darkest neighbourhoods that define the background.
_BACKGROUND_PERCENTILE = 5.0

#: Largest standard error of the fitted gain, as a share of it, that the gain is taken at:
#: on the flow benchmark's 27 stacks and 72 simulated ones the error was at most 9 %;
#: where the levels span less than the noise (the benchmark's beaded rings at 20 photons)
#: 25-490 %.
_GAIN_UNCERTAINTY = 0.2

#: Smallest rise of the fitted noise variance across the levels, as a share of its value
#: at the darkest level, that the gain is taken at (``benchmarks/bench_noise.py``): below
#: it, 15 of the 360 simulated stacks the error let through were 10-111 % off, against
#: 19 within 10 %.
_MIN_VARIANCE_RISE = 0.25

#: Above this share of the darkest voxels at a clipped floor, the dark level lies more than
#: half a noise sigma below it: the censored-Gaussian fit extrapolates from the tail.
_FLOOR_WARN_SHARE = 0.7

#: Largest share of a mean-variance bin's voxels at a clipped floor: clipping a Gaussian's
#: lowest 0.5 % lowers its variance by 1 %, 2 % by 3.6 %.
_BIN_FLOOR_SHARE = 0.005


def _checked_stack(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float64, raising if a NaN or Inf would turn every estimate NaN."""
    arr = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise DeconflowError(
            f"The image contains {bad} NaN or Inf values, which make the noise estimate NaN; "
            "replace them (e.g. with np.nan_to_num or the background level) first."
        )
    return arr


def _in_plane_residual(arr: np.ndarray) -> np.ndarray:
    """``y - mean of its 4 in-plane neighbours`` on interior voxels.

    Smooth (blurred) signal cancels; independent noise of variance ``v`` leaves
    variance ``1.25 v`` (1 from the voxel, 4/16 from its neighbours).
    """
    neighbours = (
        arr[..., :-2, 1:-1] + arr[..., 2:, 1:-1] + arr[..., 1:-1, :-2] + arr[..., 1:-1, 2:]
    ) / 4.0
    return arr[..., 1:-1, 1:-1] - neighbours


def _second_order_free_residual(arr: np.ndarray) -> np.ndarray:
    """In-plane residual that cancels signal up to second order, on interior voxels.

    The difference of the 8- and 4-neighbour Laplacians (Immerkær 1996), kernel
    ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]] / 6``: smooth signal's curvature cancels,
    which the residual ``y - mean of 4 neighbours`` passes on (a sparse widefield-like
    stack at 1000 photons came out with 2-3 times the gain), and independent noise of
    variance ``v`` leaves variance ``v`` (36 / 36).
    """
    centre = arr[..., 1:-1, 1:-1]
    edges = arr[..., :-2, 1:-1] + arr[..., 2:, 1:-1] + arr[..., 1:-1, :-2] + arr[..., 1:-1, 2:]
    corners = arr[..., :-2, :-2] + arr[..., :-2, 2:] + arr[..., 2:, :-2] + arr[..., 2:, 2:]
    return (4.0 * centre - 2.0 * edges + corners) / 6.0


def _hollow_mean(
    arr: np.ndarray, sigma: tuple[float, ...], hole: tuple[int, ...] | None = None
) -> np.ndarray:
    """Gaussian neighbourhood mean that leaves each voxel out of its own neighbourhood.

    Selecting voxels by a mean that contains their own noise biases any
    statistic of those voxels (a dark-looking neighbourhood is partly a dark
    voxel); leaving the voxel out removes that. Normalised convolution keeps the
    stack's faces unbiased too. ``hole`` (odd sizes per axis; default the voxel alone)
    leaves out a block around the voxel: the support of a statistic measured there.
    """
    hole = hole or (1,) * arr.ndim
    smooth = ndimage.gaussian_filter(arr, sigma=sigma, mode="constant")
    # the Gaussian is separable, and so are its mass and the hole's at the faces
    left_out = arr
    mass, left_mass = np.ones((1,) * arr.ndim), np.ones((1,) * arr.ndim)
    for axis, (s, h) in enumerate(zip(sigma, hole, strict=True)):
        n = arr.shape[axis]
        impulse = np.zeros(9)
        impulse[4] = 1.0
        weights = ndimage.gaussian_filter1d(impulse, s, mode="constant")[4 - h // 2 : 5 + h // 2]
        along = [n if a == axis else 1 for a in range(arr.ndim)]
        mass = mass * ndimage.gaussian_filter1d(np.ones(n), s, mode="constant").reshape(along)
        left_mass = left_mass * ndimage.correlate1d(np.ones(n), weights, mode="constant").reshape(
            along
        )
        if h == 1:
            left_out = weights[0] * left_out
        else:
            left_out = ndimage.correlate1d(left_out, weights, axis=axis, mode="constant")
    others = mass - left_mass
    # a voxel with no neighbour in reach (a single-voxel image) keeps its own value: 0 / 0
    # made the background NaN, which a Wiener run then reported as NaN in the image
    return np.divide(smooth - left_out, others, out=arr.copy(), where=others > 0)


def estimate_background(image: np.ndarray) -> float:
    """Estimate the constant background (camera offset plus diffuse haze) of a stack.

    The voxels whose neighbourhoods are darkest (the lowest 5 % of a Gaussian
    average over 2 voxels in-plane and 1 in z, *excluding the voxel itself*)
    are taken as background, and their raw values are averaged. Leaving the
    voxel out of its own neighbourhood matters: selecting voxels by a
    smoothed value that includes their own noise, or taking a low percentile
    of the smoothed stack, both land about two noise sigmas of the smoothed
    stack below the true level, which RL then turns into a haze of false
    flux over the whole volume.

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D stack in its raw units.

    Returns
    -------
    float
        Background level in the image's units.
    """
    arr = _checked_stack(image)
    neighbourhood = _hollow_mean(arr, (1.0, 2.0, 2.0)[-arr.ndim :])
    darkest = neighbourhood <= np.percentile(neighbourhood, _BACKGROUND_PERCENTILE)
    return float(arr[darkest].mean())


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Estimate the noise standard deviation of a stack, averaged over intensities.

    Uses the median absolute value of the in-plane residual ``x - mean of its
    4 neighbours``, which removes smooth (blurred) signal and keeps white
    noise with variance ``1.25 sigma^2``. Where that median is 0 (quantised
    low-count data) the residual's standard deviation is used instead.

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D stack.

    Returns
    -------
    float
        Noise standard deviation in the image's units (0 for a noiseless linear
        stack; the kinks of a piecewise-linear one leave a small positive value).
    """
    arr = _checked_stack(image)
    if arr.shape[-1] < 3 or arr.shape[-2] < 3:
        return float(np.std(arr))
    residual = _in_plane_residual(arr)
    mad = np.median(np.abs(residual - np.median(residual)))
    sigma = 1.4826 * mad / np.sqrt(1.25)
    if sigma == 0.0:
        # quantised low-count data can have a zero MAD; the plain spread still measures it
        sigma = float(np.std(residual)) / np.sqrt(1.25)
    return float(sigma)


@dataclass(frozen=True)
class CameraNoise:
    """Poisson–Gaussian camera model: ``y = offset + gain * Poisson(photons) + N(0, read_sigma^2)``.

    Its variance is linear in the mean: ``Var[y] = gain * (E[y] - offset) + read_sigma^2``.

    Attributes
    ----------
    gain : float
        ADU per photon.
    offset : float
        Camera offset (ADU of a dark pixel).
    read_sigma : float
        Read-noise standard deviation in ADU.
    """

    gain: float
    offset: float
    read_sigma: float

    def variance(self, mean: np.ndarray | float) -> np.ndarray | float:
        """Noise variance (ADU^2) at a given mean level (ADU)."""
        return self.gain * (np.asarray(mean) - self.offset) + self.read_sigma**2

    def to_photons(self, image: np.ndarray) -> np.ndarray:
        """Convert ADU to photon counts: ``(y - offset) / gain``."""
        return (np.asarray(image, dtype=np.float64) - self.offset) / self.gain

    @property
    def read_variance_photons(self) -> float:
        """Read-noise variance in photons squared, ``(read_sigma / gain)^2``."""
        return (self.read_sigma / self.gain) ** 2

    def shifted_counts(self, image: torch.Tensor) -> torch.Tensor:
        """Shifted-Poisson photon counts ``z = (y - offset) / gain + (read_sigma / gain)^2``, >= 0.

        Poisson photons plus Gaussian read noise have mean ``mu + r`` and variance
        ``mu + r`` in these units (``r`` the read variance), so ``z ~ Poisson(mu + r)``
        to a good approximation (Snyder et al., JOSA A 10, 1993). Richardson–Lucy and
        the flow's EM data step use it; treating the raw ADU as Poisson instead gives
        the camera offset the weight of hundreds of photons.
        """
        return ((image - self.offset) / self.gain + self.read_variance_photons).clamp_min(0.0)

    def shifted_background(self, background: float) -> float:
        """Convert a background in ADU to shifted-Poisson photons (:meth:`shifted_counts`), > 0.

        A background below the offset (a user's guess, or a dark corner) still leaves
        the read-noise variance, which keeps the model mean ``H x + c`` positive.
        """
        return max((background - self.offset) / self.gain, 0.0) + max(
            self.read_variance_photons, 1e-3
        )


def estimate_camera_noise(
    image: np.ndarray,
    *,
    offset: float | None = None,
    max_offset: float | None = None,
    gain: float | None = None,
    bins: int = 24,
    psf: np.ndarray | None = None,
) -> CameraNoise:
    """Estimate gain, offset and read noise from the stack itself (mean–variance regression).

    Voxels are grouped into ``bins`` quantile bins of their neighbourhood mean
    (a Gaussian mean that leaves out the voxel and the 3x3 in-plane neighbourhood its
    noise is measured on, so the grouping does not select on that noise); in each bin
    the noise variance comes from an in-plane residual that cancels smooth signal up to
    its curvature (the 3x3 kernel ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]] / 6``,
    Immerkær 1996), and the bin's level is the mean of its raw values. The residual
    ``y - mean of 4 neighbours`` used before kept the signal's curvature: on
    sparse blobs (sigma 1.5-3 voxels) at 1000-5000 photons the gain came out
    30-200 % high, and picking the flattest voxels of each bin instead biased it
    5 % low. A line
    ``Var = gain * mean + b`` is fitted through the bins, weighted by counts;
    its slope is the gain. Where its standard error exceeds 20 % of it (levels that
    span less than the noise, such as a haze of 2 photons with faint blurred structure),
    where the fitted variance rises by less than 25 % of its darkest value across the
    levels (a few per cent of bias in the bins' variances then moves the slope by tens
    of per cent while the error stays small: 0.58-2.11 times the gain on faint stacks
    of ``benchmarks/bench_noise.py``), or where fewer than two bins of 50 voxels are
    left, the gain is not measured and a :class:`~deconflow.DeconflowWarning` says so: the
    larger of the slope and 1 ADU per photon is taken (1 without a regression), since too
    low a gain costs the flow far more than too high (``docs/benchmarks/gain_sensitivity.md``).
    Voxels beside a camera ceiling (a maximum of 2^b - 1,
    b = 8 ... 16, held by several voxels) are left out of the bins: clipped voxels hold
    no noise. Offset and read noise are not separable from one
    line: the offset is the mean of the darkest neighbourhoods (right when
    part of the field is truly dark), unless given, and the read noise is the
    noise measured there.

    Where no part of the field is dark (dense structure under a wide PSF at high counts),
    the darkest neighbourhoods still hold blurred signal and overestimate the offset: on
    the flow benchmark's Voronoi membranes under the widefield PSF at 1000 photons, 167 ADU
    for a true offset of 100 ADU. A known background level bounds it (``max_offset``).
    Offset and read noise then split the darkest level's variance as for a given offset.
    On that stack the flow (mean of 4) went from −1.12 to +0.19 dB against oracle RL once
    bounded.

    With the ``psf``, each voxel's noise variance comes instead from the frequencies the
    PSF does not pass (``|OTF| < 1e-3`` of its peak): the stack's out-of-band part times
    its residual, divided by the exact diagonal of that product's filter (both applied
    in the DCT domain, the stack mirrored at its faces), against the same local weighted
    mean of the raw values as its level. The signal leaves only the product of two small
    remainders, so sharp confocal structure at high counts no longer leaks into the
    residual as if it were noise. The square of the out-of-band stack read against a
    Gaussian mean of the stack, used until 2026-11-27, spread the noise over the PSF's
    extent and flattened bright peaks: sparse blobs blurred by the very PSF passed came
    out 1.15-1.61 times the gain. Now, on 72 such stacks (sparse and dense blobs under
    theoretical NA 1.2 widefield and confocal PSFs, voxels of 0.2 x 0.1 x 0.1 and
    0.3 x 0.065 x 0.065 µm, 20-1000 photons, gains 0.5-4, read noise 1-5 ADU) the gain is
    within 9 % (before -25 to +61 %), and on the 27 simulated stacks of
    ``benchmarks/bench_flow_quality.py`` (gain 1) 0.94-1.10 (before 0.85-1.18; the three
    stacks too faint to tell take the fallback).

    An image whose camera offset was subtracted and negative values clipped at 0 (by
    acquisition software or a script; or a dark-subtracted unsigned one) piles the read
    noise below 0 up on a flat floor: its minimum, held by far more of the darkest voxels
    than the histogram just above it predicts (:func:`~deconflow.physics._clipping.clipped_floor`).
    Bins more than 0.5 % of whose voxels sit at such a floor are then left out (clipping
    lowers their variance), the dark level and its variance come from a Gaussian censored
    at the floor (:func:`~deconflow.physics._clipping.censored_gaussian`), and that point
    stands in for the left-out bins in the regression. On sparse blobs with 4 ADU of read
    noise at gain 1, offset subtracted and clipped at 0 (uint16, 44 % of the voxels at 0),
    the gain went from 1.77 to 0.96, the offset from 1.56 to -0.07 ADU (true 0) and the
    read noise from 1.98 to 4.02 ADU; with the ``psf``, the gain is 0.97 (0.98 unclipped).
    With more than 70 % of the darkest voxels at the floor (its dark level
    more than half a noise sigma below it) the fit extrapolates from the tail, and a
    :class:`~deconflow.DeconflowWarning` says so.

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D raw stack in ADU.
    offset : float, optional
        Known camera offset (from a dark frame or the camera's data sheet).
    max_offset : float, optional
        Upper bound on an estimated offset: a background level known to be the offset
        plus haze (a user's ``background``). Ignored when ``offset`` is given.
    gain : float, optional
        Known gain (ADU per photon, from a camera calibration): no regression, and the
        read noise is split off the dark level's variance with it.
    bins : int
        Number of intensity bins.
    psf : numpy.ndarray, optional
        The PSF, sampled like the image (any size; centred). Falls back to the in-plane
        residual when fewer than 5 % of the frequencies lie below 1e-2 of its OTF's peak
        (1e-3 where that leaves 5 % of them, ``physics._out_of_band``).

    Returns
    -------
    CameraNoise
        The estimated model (gain >= 1e-6 times the largest bin level).

    Warns
    -----
    DeconflowWarning
        When more than 70 % of the darkest voxels sit at a clipped floor: the offset and
        read noise cannot be read off the image; give them. When the levels span too
        little to tell the gain (its standard error above 20 % of it, a variance rise
        under 25 %, or fewer than two bins): the larger of the slope and 1 is taken;
        give it.
    """
    arr = _checked_stack(image)
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 3:
        raise DeconflowError(
            f"The camera noise is estimated on a 2D or 3D stack at least 3x3 in-plane, got "
            f"shape {arr.shape}; give gain, camera_offset and read_sigma instead."
        )
    in_plane = (1.0,) * (arr.ndim - 2)
    interior = (..., slice(1, -1), slice(1, -1))
    residual = _second_order_free_residual(arr).ravel()
    values, dark, floor, floor_clipped = _dark_voxels_and_floor(arr)
    out_of_band = None if psf is None else out_of_band_variance(arr, psf)
    # clipped voxels hold no noise and the residual jumps at their edges: 0.1 % of a stack
    # at 65535 made the gain 30 % high, 3 % made it 4.5 times too high
    usable = ~near_clipping(arr, floor if floor_clipped else None)[interior].ravel()
    at_floor = values == floor if floor_clipped else None
    centres, variances, counts = [], [], []
    # bins by a mean that leaves out the voxel and the residual's 3x3 in-plane support: a
    # grouping that shares noise with the residual selects its spread (a bin of the
    # brightest-looking neighbourhoods holds large residuals), and where the levels span
    # less than the noise (2 photons of haze) that alone made the gain 3 times too high
    hole = (1,) * (arr.ndim - 2) + (3, 3)
    grouping = _hollow_mean(arr, (*in_plane, 2.0, 2.0), hole)[interior].ravel()
    binned, left_out = _quantile_bins(grouping, bins, usable, at_floor)
    if out_of_band is None:
        levels, local_variance = values, None
    else:
        local_variance, levels = (a[interior].ravel() for a in out_of_band)
    for selected in binned:
        centres.append(float(levels[selected].mean()))
        if local_variance is None:
            variances.append(float(np.var(residual[selected])))
        else:  # each voxel's own noise variance, without the signal's curvature
            variances.append(float(local_variance[selected].mean()))
        counts.append(int(selected.sum()))
    if not floor_clipped:
        dark_variance = float(np.var(residual[dark]))
        dark_level = float(values[dark].mean())
    else:
        censored = censored_gaussian(values[dark], floor)
        if censored is None:  # (almost) nothing above the floor: no noise to measure
            share, dark_level, dark_variance = 1.0, floor, 0.0
        else:
            share, dark_level, dark_variance = censored
            # the censored fit's point stands in for the bins left out, with their weight:
            # with the dark set's weight alone, the out-of-band gain of a confocal stack
            # clipped at its dark level came out 1.45 times the truth (1.26 unclipped,
            # 1.27 with it)
            centres.insert(0, dark_level)
            variances.insert(0, dark_variance)
            counts.insert(0, max(left_out, int(np.count_nonzero(dark))))
        if share > _FLOOR_WARN_SHARE:
            _warn_clipped_floor(share, floor)
    if gain is not None:
        if not gain > 0:
            raise DeconflowError(f"gain must be > 0 ADU per photon, got {gain}.")
        gain = float(gain)
    elif len(centres) < 2:
        # too few voxels (or levels) for the regression: assume 1 ADU per photon, but keep
        # a given or bounded offset. Said aloud: a stack clipped at 0 with read noise of 2
        # ADU and a gain of 2.5 fell back here without a word (0.4 times the gain)
        _warn_undetermined_gain(
            f"too few voxels off the image's floor and ceiling to compare levels "
            f"({len(centres)} intensity group{'s' if len(centres) != 1 else ''} of >= 50)",
            1.0,
        )
        gain = 1.0
    else:
        slope, intercept, error = _weighted_slope(centres, variances, counts)
        # the noise variance must rise visibly across the levels: where it rises by less
        # than _MIN_VARIANCE_RISE of its darkest value, a bias of a few per cent in the
        # groups' variances (blur left in, quantisation, clipping) moves the slope by tens
        # of per cent while the scatter, and so the error, stays small (bench_noise.py)
        darkest = slope * min(centres) + intercept
        rise = slope * (max(centres) - min(centres))
        if error <= _GAIN_UNCERTAINTY * slope and rise >= _MIN_VARIANCE_RISE * max(darkest, 0.0):
            # a floor relative to the image's levels, so the estimate scales with the image:
            # an absolute 1e-6 ADU/photon floored a float image in small units (gain ~1e-9)
            gain = max(slope, 1e-6 * max(abs(c) for c in centres), 1e-30)
        else:
            # levels that span less than the noise (a stack of haze and faint blur): the
            # slope is noise, 0.1-0.8 +- 0.2-0.6 on the flow benchmark's beaded rings at
            # 20 photons (gain 1)
            # the larger of the slope and 1 is taken: too low a gain makes the flow fit the
            # noise (half the gain cost up to 11 dB, twice it up to 2.4 dB;
            # gain_sensitivity.md), and a camera at 2.5 ADU per photon declined here went
            # from 0.4 times its gain (1 taken) to 0.4-2.5 times, 30 of 49 stacks >= 0.6
            gain = max(slope, 1.0) if np.isfinite(slope) else 1.0
            _warn_undetermined_gain(
                f"the stack's brightness varies too little: the regression gives "
                f"{slope:.2f} ± {error:.2f} ADU per photon, and the noise variance rises "
                f"by {100 * rise / max(darkest, 1e-30):.0f} % across the levels",
                gain,
            )
    if offset is not None:
        camera_offset = float(offset)
    elif max_offset is not None:
        camera_offset = min(dark_level, float(max_offset))
    else:
        camera_offset = dark_level
    # photons still present at the dark level (when the offset is given or bounded) add
    # gain * their mean
    read_variance = max(dark_variance - gain * (dark_level - camera_offset), 0.0)
    return CameraNoise(gain=gain, offset=camera_offset, read_sigma=float(np.sqrt(read_variance)))


def floor_clipped_voxels(image: np.ndarray) -> np.ndarray:
    """Return the mask of voxels clipped at a flat floor (all False when there is none).

    The floor is the stack's minimum, held by far more of the voxels with the darkest
    neighbourhoods (the 5 % lowest, as in :func:`estimate_camera_noise`) than Gaussian
    read noise would leave there: an offset-subtracted image clipped at 0, or a
    dark-subtracted unsigned one. Photon counts' zeros are not a floor.

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D stack, at least 3x3 in-plane.

    Returns
    -------
    numpy.ndarray
        Boolean mask of ``image``'s shape.
    """
    arr = _checked_stack(image)
    none = np.zeros(arr.shape, dtype=bool)
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 3:
        return none
    _, _, floor, clipped = _dark_voxels_and_floor(arr)
    return arr == floor if clipped else none


def _dark_voxels_and_floor(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Return the interior values, the darkest neighbourhoods' mask, the minimum, and floor.

    The mask holds the 5 % of interior voxels with the darkest neighbourhoods; the last
    item says whether the stack's minimum is a clipped floor (:func:`clipped_floor`).
    """
    interior = (..., slice(1, -1), slice(1, -1))
    hollow = _hollow_mean(arr, ((1.0,) * (arr.ndim - 2)) + (2.0, 2.0))[interior].ravel()
    values = arr[interior].ravel()
    dark = hollow <= np.quantile(hollow, 0.05)
    floor = float(arr.min())
    return values, dark, floor, clipped_floor(values[dark], floor)


def _weighted_slope(
    centres: list[float], variances: list[float], counts: list[int]
) -> tuple[float, float, float]:
    """Slope, intercept and the slope's standard error of the line through the bins.

    Weights ``sqrt(counts)``; the error is scaled by the bins' scatter about the line;
    with 2 bins it is 0.
    """
    x, y = np.asarray(centres), np.asarray(variances)
    weights = np.sqrt(np.asarray(counts, dtype=np.float64))
    slope, intercept = np.polyfit(x, y, 1, w=weights)
    if x.size < 3:
        return float(slope), float(intercept), 0.0
    scatter = float(np.sum((weights * (y - slope * x - intercept)) ** 2)) / (x.size - 2)
    spread = float(np.sum(weights**2 * (x - np.average(x, weights=weights**2)) ** 2))
    error = float(np.sqrt(scatter / spread)) if spread > 0 else float("inf")
    return float(slope), float(intercept), error


def _warn_undetermined_gain(reason: str, assumed: float) -> None:
    """Warn that the gain cannot be read off the stack (``reason``) and ``assumed`` is taken."""
    taken = (
        "1 ADU per photon is assumed"
        if assumed == 1.0
        else f"{assumed:.3g} ADU per photon (the regression's slope, above 1) is taken"
    )
    warnings.warn(
        f"The camera gain cannot be told from the stack's noise ({reason}), so {taken}. "
        "Give the camera's gain: deconvolve(..., gain=), the 'flow' "
        "section of a --config YAML file, or the napari widget's field. If it must be "
        "guessed, guess high: half the true gain cost the flow up to 11 dB on its "
        "benchmark, twice it up to 2.4 dB (docs/how-it-works.md).",
        DeconflowWarning,
        stacklevel=3,
    )


def _warn_clipped_floor(share: float, floor: float) -> None:
    """Warn that the dark background is clipped too much for its level and read noise."""
    warnings.warn(
        f"{100 * share:.0f} % of the darkest voxels sit at the image's minimum, {floor:g}, "
        f"a flat floor: the camera offset was subtracted and negative values clipped at "
        f"{floor:g}, so the camera offset and read noise estimated from the image are "
        "unreliable. Give the camera's gain, camera_offset (about 0 after the "
        "subtraction) and read_sigma: deconvolve(..., gain=, camera_offset=, read_sigma=), "
        "the 'flow' section of a --config YAML file, or the napari widget's fields.",
        DeconflowWarning,
        stacklevel=3,
    )


def _quantile_bins(
    grouping: np.ndarray, bins: int, usable: np.ndarray, at_floor: np.ndarray | None = None
) -> tuple[list[np.ndarray], int]:
    """Masks of the quantile bins of ``grouping[usable]`` with >= 50 voxels.

    The top 2 % join the last bin; voxels outside ``usable`` are in none. A bin more
    than 0.5 % of whose voxels (usable or not) are ``at_floor`` is left out: leaving out
    only the voxels beside the floor keeps those whose neighbourhoods all happen to lie
    above it, which have too little spread. Also returns how many voxels the bins left
    out for the floor held.
    """
    if not usable.any():
        return [], 0
    edges = np.unique(np.quantile(grouping[usable], np.linspace(0.0, 0.98, bins + 1)))
    which = np.digitize(grouping, edges[1:-1])
    selected, left_out = [], 0
    for b in range(len(edges) - 1):
        in_bin = which == b
        size = int(np.count_nonzero(in_bin))
        if at_floor is not None and np.count_nonzero(at_floor & in_bin) > _BIN_FLOOR_SHARE * size:
            left_out += size
        elif int(np.count_nonzero(in_bin & usable)) >= 50:
            selected.append(in_bin & usable)
    return selected, left_out
