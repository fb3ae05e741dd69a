"""The intensity normalisation the prior is trained in, and that inference must apply and invert.

Rule (one place, used by training and inference)::

    s      = gaussian_filter(volume, sigma=1 voxel)
    offset = 1st percentile of s
    scale  = max(s) - offset
    x_norm = (volume - offset) / scale           # background ≈ 0, brightest structure ≈ 1

Why not a high percentile: when structure fills less than ~0.1 % of the voxels (a few
puncta or thin filaments in a large field) the 99.9th percentile lands in the background
and the scale is set by noise, so structure comes out at 10–100 in prior units (the
failure seen in the issue-7 experiment). The maximum of a σ = 1 voxel smoothed copy always
lands on the brightest structure, whatever fraction of the volume it fills, and the
smoothing stops single hot pixels or noise from setting it. The price: the scale of a
blurred image is lower than its deconvolved object's (blur spreads peaks), so fit the
normalisation on a first object estimate (e.g. a few Richardson–Lucy iterations), not the
raw stack — and training multiplies each normalised patch by a random gain in
[0.5, 1.5] so the prior tolerates the remaining error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from scipy import ndimage

from deconflow._errors import DeconflowError

__all__ = ["Normalization", "fit_normalization"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

_SMOOTH_SIGMA = 1.0
_LOW_PERCENTILE = 1.0


@dataclass(frozen=True)
class Normalization:
    """An affine map between image units and prior units: ``x_norm = (x - offset) / scale``.

    Attributes
    ----------
    offset : float
        Image value that maps to 0 (background).
    scale : float
        Image units per prior unit (> 0).
    """

    offset: float
    scale: float

    def apply(self, x: ArrayT) -> ArrayT:
        """Image units → prior units."""
        return (x - self.offset) / self.scale

    def invert(self, x: ArrayT) -> ArrayT:
        """Prior units → image units."""
        return x * self.scale + self.offset

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return {"offset": self.offset, "scale": self.scale}


def fit_normalization(volume: np.ndarray | torch.Tensor) -> Normalization:
    """Fit the prior's normalisation to a 2D or 3D volume (see the module docstring).

    Parameters
    ----------
    volume : numpy.ndarray or torch.Tensor
        Image or object estimate, in any units; finite values.

    Returns
    -------
    Normalization
        Offset and scale; ``apply`` maps the volume's background to ~0 and its brightest
        structure to ~1.

    Raises
    ------
    DeconflowError
        If the volume is not 2D or 3D, is empty, or is not finite.
    """
    # float32 before numpy: numpy has no bfloat16, the dtype a bfloat16 prior's output has
    arr = volume.detach().float().cpu().numpy() if isinstance(volume, torch.Tensor) else volume
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim not in (2, 3):
        # a stack of volumes would be smoothed across its first axis and share one scale
        raise DeconflowError(
            f"fit_normalization takes one 2D or 3D volume, got shape {arr.shape}; "
            "normalise each volume of a batch or time series on its own."
        )
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise DeconflowError("Cannot normalise an empty volume or one with NaN/Inf values.")
    smooth = ndimage.gaussian_filter(arr, _SMOOTH_SIGMA, mode="nearest")
    offset = float(np.percentile(smooth, _LOW_PERCENTILE))
    scale = float(smooth.max()) - offset
    # a flat volume has no structure to scale by; keep its units rather than divide by ~0.
    # Relative to the volume's own magnitude (float32 keeps ~7 digits): a float image in
    # small units (scaled to a sum of 1, values ~1e-7) is not flat, and read as flat its
    # flow run fell back to the first estimate (3.5 dB lost at a scale of 1e-9)
    floor = 1e-6 * max(abs(offset), float(np.abs(smooth).max()))
    return Normalization(offset=offset, scale=scale if scale > floor else 1.0)
