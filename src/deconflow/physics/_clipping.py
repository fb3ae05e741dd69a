"""Clipping at a camera's ceiling or floor: voxels that hold no noise, and the dark level below.

A ceiling is a camera's largest count. A floor is what an offset-subtracted image
clipped at 0 (by acquisition software or a preprocessing script), or a dark-subtracted
unsigned image, piles up at its minimum: the part of the read noise below it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

__all__ = ["censored_gaussian", "clipped_floor", "near_clipping", "saturated_voxels"]

#: Integer ceilings of 8- to 16-bit cameras: a flat top at one of them is clipping.
_CAMERA_CEILINGS = tuple(2**b - 1 for b in (8, 10, 12, 14, 16))

#: Fewest dark voxels at the minimum that can make a floor: Gaussian read noise leaves a
#: handful at most at its lowest value.
_FLOOR_MIN_VOXELS = 10

#: A floor holds this many times the voxels that continuing the histogram above it
#: predicts. Continuing ``log(count)`` linearly from the next two values over-predicts a
#: Gaussian's (log-concave) tail and predicts twice a Poisson histogram's zeros, so
#: neither reaches it (simulated photon counts: 0.2-1.3). Read noise of 3 ADU clipped at 0
#: with the dark level 0, 3 and 6 ADU above it holds 3.8, 2.5 and 1.6 times the prediction
#: in a uint16 image (the last, 3 % of the dark voxels clipped, is left undetected),
#: hundreds of times in a float one (continuous values never repeat).
_FLOOR_EXCESS = 2.0


def saturated_voxels(arr: np.ndarray) -> np.ndarray:
    """Return the mask of voxels clipped at a camera's ceiling (all False when none are).

    A single voxel at the maximum is a peak, not clipping; a flat top of two or more
    voxels at 2^b - 1 (b = 8, 10, 12, 14, 16), or at an integer dtype's maximum, is.
    """
    top = float(arr.max())
    ceilings = [float(c) for c in _CAMERA_CEILINGS]
    if np.issubdtype(arr.dtype, np.integer):
        ceilings.append(float(np.iinfo(arr.dtype).max))
    clipped = arr == top
    if top not in ceilings or np.count_nonzero(clipped) < 2:
        return np.zeros(arr.shape, dtype=bool)
    return clipped


def clipped_floor(dark: np.ndarray, floor: float) -> bool:
    """Whether the darkest voxels' values ``dark`` are clipped at ``floor``, the stack's minimum.

    Clipped read noise piles up at the floor far above what the histogram just above it
    predicts (its count at the next value squared over its count at the one after), and
    the values above the floor spread over more than one quantisation step and more than
    their distance to the floor. Not detected: photon counts (a Poisson histogram's zeros
    are half that prediction, and spread over about one step), read noise of under about
    two quantisation steps (too few values above the floor to tell), and padding far
    below the data.
    """
    at_floor = dark == floor
    pile = int(np.count_nonzero(at_floor))
    if pile < _FLOOR_MIN_VOXELS:
        return False
    above = dark[~at_floor]
    if above.size == 0:
        return True  # a flat floor and nothing else: no noise at all
    levels, counts = np.unique(above, return_counts=True)
    if levels.size < 2:
        return False
    predicted = float(counts[0]) ** 2 / float(counts[1])
    # the noise spans more than a quantisation step and than the gap down to the floor
    gap = max(float(levels[0]) - floor, float(levels[1] - levels[0]))
    return pile >= _FLOOR_EXCESS * max(predicted, 1.0) and float(np.std(above)) >= gap


def near_clipping(arr: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Voxels whose in-plane 3x3 neighbourhood holds a voxel at a ceiling (or at ``floor``)."""
    clipped = saturated_voxels(arr)
    if floor is not None:
        clipped |= arr == floor
    if not clipped.any():
        return clipped
    footprint = np.ones((1,) * (arr.ndim - 2) + (3, 3), dtype=bool)
    return ndimage.binary_dilation(clipped, structure=footprint)


def censored_gaussian(values: np.ndarray, floor: float) -> tuple[float, float, float] | None:
    """Share at ``floor``, mean and variance of the Gaussian that, clipped there, gave ``values``.

    The share ``p`` at the floor fixes where it cuts the Gaussian (``a = Phi^-1(p)``
    standard deviations above its mean); the values above it are then a truncated
    Gaussian with mean ``mu + s h`` and variance ``s^2 (1 + a h - h^2)``, ``h`` the
    inverse Mills ratio ``phi(a) / (1 - Phi(a))`` (the moment form of the Tobit model).
    The cut itself is not needed, so rounding to integers (which clips everything
    below ``floor + 0.5``) changes nothing. ``None`` with fewer than 50 values above the
    floor.
    """
    at_floor = values <= floor
    share = float(np.mean(at_floor))
    above = values[~at_floor]
    if above.size < 50:
        return None
    if share == 0.0:
        return share, float(np.mean(above)), float(np.var(above))
    a = float(special.ndtri(share))
    # phi(a) / (1 - Phi(a)) in logs: stable far into either tail
    mills = float(np.exp(-0.5 * a * a - 0.5 * np.log(2 * np.pi) - special.log_ndtr(-a)))
    variance = float(np.var(above)) / max(1.0 + a * mills - mills**2, 1e-6)
    return share, float(np.mean(above)) - float(np.sqrt(variance)) * mills, variance
