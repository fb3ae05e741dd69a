"""Quick estimates of background level and noise from the measured stack itself."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["estimate_background", "estimate_noise_sigma"]

#: Share (percent) of voxels with the darkest neighbourhoods that define the background.
_BACKGROUND_PERCENTILE = 5.0


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
    sigma = (1.0, 2.0, 2.0)[-arr.ndim :]
    # normalised convolution: zero padding plus division by the kernel mass that fell
    # inside, so that no voxel (an edge voxel under mirror padding) weighs in twice
    smooth = ndimage.gaussian_filter(arr, sigma=sigma, mode="constant")
    mass = ndimage.gaussian_filter(np.ones_like(arr), sigma=sigma, mode="constant")
    impulse = np.zeros((9,) * arr.ndim)
    impulse[(4,) * arr.ndim] = 1.0
    self_weight = float(ndimage.gaussian_filter(impulse, sigma=sigma, mode="constant").max())
    neighbourhood = (smooth - self_weight * arr) / (mass - self_weight)
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
    core = arr[..., 1:-1, 1:-1]
    neighbours = (
        arr[..., :-2, 1:-1] + arr[..., 2:, 1:-1] + arr[..., 1:-1, :-2] + arr[..., 1:-1, 2:]
    ) / 4.0
    residual = core - neighbours
    mad = np.median(np.abs(residual - np.median(residual)))
    sigma = 1.4826 * mad / np.sqrt(1.25)
    if sigma == 0.0:
        # quantised low-count data can have a zero MAD; the plain spread still measures it
        sigma = float(np.std(residual)) / np.sqrt(1.25)
    return float(sigma)
