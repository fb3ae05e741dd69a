"""Checks at the public boundary: every message says what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize

__all__ = ["as_float_image", "check_name", "check_voxel_size", "check_voxel_size_of_axes"]


def check_name(
    kind: str, name: str, allowed: Iterable[str], aliases: Mapping[str, str] | None = None
) -> None:
    """Raise when ``name`` is not in ``allowed``, suggesting the closest allowed name.

    ``aliases`` maps names people commonly use (``"richardson-lucy"``) to the
    allowed name to suggest.
    """
    choices = sorted(allowed)
    if name in choices:
        return
    normalized = str(name).strip().lower().replace("_", "-")
    # "RL" or "rl_tv" (the settings section's name) mean an allowed name in another spelling
    alias = normalized if normalized in choices else (aliases or {}).get(normalized)
    close = [alias] if alias else difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DeconflowError(f"Unknown {kind} {name!r}.{hint} Choose from: {', '.join(choices)}.")


def as_float_image(array: object, what: str) -> np.ndarray:
    """Validate a 2D/3D real image and return a float32 copy (the input is never modified).

    Parameters
    ----------
    array : array-like
        The image or PSF.
    what : str
        ``"image"`` or ``"PSF"``, used in messages.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        raise DeconflowError(f"The {what} is empty (shape {arr.shape}); pass a non-empty array.")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.complexfloating):
        raise DeconflowError(
            f"The {what} has dtype {arr.dtype}; deconvolution needs real intensities "
            "(integer or float). Convert a mask or take the magnitude first."
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DeconflowError(f"The {what} has unsupported dtype {arr.dtype}; pass numbers.")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4 * arr.shape[-1]:
        kind = "RGB" if arr.shape[-1] == 3 else "RGBA"
        raise DeconflowError(
            f"The {what} has shape {arr.shape}, which looks like an {kind} picture (colour "
            "last), not a (Z, Y, X) stack. Deconvolve the raw single-channel data instead of a "
            "rendered screenshot; for a true colour image split the channels (image[..., c])."
        )
    if arr.ndim not in (2, 3):
        raise DeconflowError(
            f"The {what} has {arr.ndim} axes (shape {arr.shape}); deconflow.deconvolve takes one "
            "2D (Y, X) or 3D (Z, Y, X) stack. Split channels and time points first "
            "(e.g. image[c] or image[t, c])."
        )
    # float64 first so that large integers survive the finiteness and overflow checks
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise DeconflowError(
            f"The {what} contains {bad} NaN or Inf values; replace them (e.g. with "
            "np.nan_to_num or the background level) before deconvolving."
        )
    largest = float(np.abs(out).max())
    if largest > float(np.finfo(np.float32).max):  # a float32 copy would hold Inf
        raise DeconflowError(
            f"The {what} has values beyond float32's range (largest magnitude {largest:.3g}, "
            "limit 3.4e38), which deconvolution computes in; rescale it (e.g. divide by its "
            "maximum) first."
        )
    return out.astype(np.float32)


def psf_voxel_size_or_image(
    image_voxel: VoxelSize | None, psf_voxel: VoxelSize | None
) -> VoxelSize | None:
    """Return the PSF's voxel size (checked sizes), the image's when none is given.

    Raises
    ------
    DeconflowError
        If the PSF's is given without the image's: there is nothing to resample it to.
    """
    if image_voxel is None and psf_voxel is not None:
        raise DeconflowError(
            "psf_voxel_size was given without voxel_size; give the image's voxel size too so "
            "the PSF can be resampled to it."
        )
    return psf_voxel if psf_voxel is not None else image_voxel


def check_voxel_size(voxel_size: Sequence[float] | None, ndim: int, what: str) -> VoxelSize | None:
    """Validate a voxel size: ``ndim`` positive finite numbers in micrometres, or None."""
    if voxel_size is None:
        return None
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError) as exc:
        raise DeconflowError(
            f"{what} must be a sequence of {ndim} numbers in micrometres, got {voxel_size!r}."
        ) from exc
    if len(values) != ndim:
        order = "(z, y, x)" if ndim == 3 else "(y, x)"
        raise DeconflowError(
            f"{what} has {len(values)} entries but the data has {ndim} axes; give {ndim} "
            f"values ordered {order} in micrometres."
        )
    if any(not np.isfinite(v) or v <= 0 for v in values):
        raise DeconflowError(f"{what} must be positive micrometres, got {values}.")
    return values


def check_voxel_size_of_axes(voxel_size: Sequence[float], axes: str, what: str) -> str:
    """Validate a voxel size against a file's axis letters; return its spatial axes (z, y, x order).

    Voxel sizes cover the spatial axes only; writers would otherwise store sizes that
    read back as none (OME requires positive sizes) or on the wrong axes.
    """
    spatial = "".join(a for a in "ZYX" if a in axes)
    if len(voxel_size) != len(spatial):
        raise DeconflowError(
            f"{what} {tuple(voxel_size)} does not match the spatial axes {spatial}; give one "
            "size per spatial axis."
        )
    check_voxel_size(voxel_size, len(spatial), what)
    return spatial
