"""Quick estimates of background level and noise from the measured stack itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

__all__ = ["CameraNoise", "estimate_background", "estimate_camera_noise", "estimate_noise_sigma"]

#: Share (percent) of voxels with the darkest neighbourhoods that define the background.
_BACKGROUND_PERCENTILE = 5.0


def _in_plane_residual(arr: np.ndarray) -> np.ndarray:
    """``y - mean of its 4 in-plane neighbours`` on interior voxels.

    Smooth (blurred) signal cancels; independent noise of variance ``v`` leaves
    variance ``1.25 v`` (1 from the voxel, 4/16 from its neighbours).
    """
    neighbours = (
        arr[..., :-2, 1:-1] + arr[..., 2:, 1:-1] + arr[..., 1:-1, :-2] + arr[..., 1:-1, 2:]
    ) / 4.0
    return arr[..., 1:-1, 1:-1] - neighbours


def _hollow_mean(arr: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    """Gaussian neighbourhood mean that leaves each voxel out of its own neighbourhood.

    Selecting voxels by a mean that contains their own noise biases any
    statistic of those voxels (a dark-looking neighbourhood is partly a dark
    voxel); leaving the voxel out removes that. Normalised convolution keeps the
    stack's faces unbiased too.
    """
    smooth = ndimage.gaussian_filter(arr, sigma=sigma, mode="constant")
    mass = ndimage.gaussian_filter(np.ones_like(arr), sigma=sigma, mode="constant")
    impulse = np.zeros((9,) * arr.ndim)
    impulse[(4,) * arr.ndim] = 1.0
    self_weight = float(ndimage.gaussian_filter(impulse, sigma=sigma, mode="constant").max())
    return (smooth - self_weight * arr) / (mass - self_weight)


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
    arr = np.asarray(image, dtype=np.float64)
    neighbourhood = _hollow_mean(arr, (1.0, 2.0, 2.0)[-arr.ndim :])
    darkest = neighbourhood <= np.percentile(neighbourhood, _BACKGROUND_PERCENTILE)
    return float(arr[darkest].mean())


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Estimate the noise standard deviation of a stack, averaged over intensities.

    Uses the median absolute value of the in-plane residual ``x - mean of its
    4 neighbours``, which removes smooth (blurred) signal and keeps white
    noise with variance ``1.25 sigma^2``.

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D stack.

    Returns
    -------
    float
        Noise standard deviation in the image's units (0 for a noiseless,
        piecewise-linear stack).
    """
    arr = np.asarray(image, dtype=np.float64)
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
    bins: int = 24,
) -> CameraNoise:
    """Estimate gain, offset and read noise from the stack itself (mean–variance regression).

    Voxels are grouped into ``bins`` quantile bins of their neighbourhood mean
    (a Gaussian mean that leaves the voxel itself out, so the grouping does not
    select on the voxel's own noise); in each bin the flattest 80 %
    (least signal curvature, which would leak into the residual) give the
    noise variance from the in-plane residual ``y - mean of 4 neighbours``,
    and the bin's level is the mean of its raw values. A line
    ``Var = gain * mean + b`` is fitted through the bins, weighted by counts;
    its slope is the gain. Offset and read noise are not separable from one
    line: the offset is the mean of the darkest neighbourhoods (right when
    part of the field is truly dark), unless given, and the read noise is the
    noise measured there.

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D raw stack in ADU.
    offset : float, optional
        Known camera offset (from a dark frame or the camera's data sheet).
    bins : int
        Number of intensity bins.

    Returns
    -------
    CameraNoise
        The estimated model (gain >= 1e-6).
    """
    arr = np.asarray(image, dtype=np.float64)
    in_plane = (1.0,) * (arr.ndim - 2)
    interior = (..., slice(1, -1), slice(1, -1))
    level = _hollow_mean(arr, (*in_plane, 2.0, 2.0))[interior].ravel()
    core = arr[interior]
    residual = _in_plane_residual(arr).ravel()
    flat_sigma = (0.0,) * (arr.ndim - 2) + (2.5, 2.5)
    curvature = np.abs(ndimage.gaussian_laplace(arr, sigma=flat_sigma))[interior].ravel()
    values = core.ravel()
    edges = np.unique(np.quantile(level, np.linspace(0.0, 0.98, bins + 1)))
    which = np.digitize(level, edges[1:-1])
    centres, variances, counts = [], [], []
    for b in range(len(edges) - 1):
        selected = which == b
        if int(selected.sum()) < 50:
            continue
        flat = curvature[selected] <= np.quantile(curvature[selected], 0.8)
        centres.append(float(values[selected].mean()))
        variances.append(float(np.var(residual[selected][flat]) / 1.25))
        counts.append(int(selected.sum()))
    dark = level <= np.quantile(level, 0.05)
    dark_variance = float(np.var(residual[dark]) / 1.25)
    dark_level = float(values[dark].mean())
    if len(centres) < 2:
        return CameraNoise(gain=1.0, offset=dark_level, read_sigma=float(np.sqrt(dark_variance)))
    slope, _ = np.polyfit(centres, variances, 1, w=np.sqrt(counts))
    gain = max(float(slope), 1e-6)
    camera_offset = dark_level if offset is None else float(offset)
    # photons still present at the dark level (when an offset is given) add gain * their mean
    read_variance = max(dark_variance - gain * (dark_level - camera_offset), 0.0)
    return CameraNoise(gain=gain, offset=camera_offset, read_sigma=float(np.sqrt(read_variance)))
