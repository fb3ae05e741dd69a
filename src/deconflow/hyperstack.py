"""Multichannel and time-lapse stacks: one volume at a time through :mod:`deconflow.pipeline`.

A hyperstack has leading ``T`` and/or ``C`` axes before its spatial axes
(``ZYX`` or ``YX``). Each channel may have its own PSF; each PSF is prepared
once and reused for every time point.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deconflow._errors import DeconflowError
from deconflow._validate import check_voxel_size, psf_voxel_size_or_image
from deconflow._version import __version__
from deconflow.config import DeconvolutionSettings
from deconflow.pipeline import Progress, Result, iter_deconvolve, prepared_psf
from deconflow.psf.measured import PreparedPSF

__all__ = ["HyperstackResult", "iter_deconvolve_hyperstack", "split_axes"]

_LEADING = ("T", "C")


def split_axes(axes: str, ndim: int) -> tuple[str, str]:
    """Split an axes string into leading (``T``, ``C``) and spatial (``ZYX``/``YX``) parts.

    Raises
    ------
    DeconflowError
        When the axes do not describe ``ndim`` dimensions, or are not some of
        ``T``, ``C`` followed by ``ZYX`` or ``YX``.
    """
    axes = axes.upper()
    if len(axes) != ndim:
        raise DeconflowError(
            f"axes {axes!r} name {len(axes)} dimensions but the data has {ndim}; give one "
            "letter per dimension, e.g. 'CZYX'."
        )
    spatial = "ZYX" if axes.endswith("ZYX") else "YX" if axes.endswith("YX") else ""
    leading = axes[: len(axes) - len(spatial)]
    if not spatial or any(a not in _LEADING for a in leading) or len(set(leading)) != len(leading):
        raise DeconflowError(
            f"Unsupported axes {axes!r}: deconflow takes optional T and C axes followed by ZYX "
            "(or YX), e.g. 'TCZYX', 'CZYX', 'ZYX'. Reorder the data (numpy.moveaxis) first."
        )
    return leading, spatial


@dataclass(frozen=True)
class HyperstackResult:
    """The outcome of deconvolving every volume of a hyperstack.

    Attributes
    ----------
    image : numpy.ndarray
        float32, the input's shape and axes, in the input's units with each
        volume's background removed.
    axes : str
        Axis letters of ``image``.
    settings : DeconvolutionSettings
        Settings used, with the voxel sizes that applied (the PSF's is the image's when
        none was given).
    psfs : tuple of PreparedPSF
        The prepared PSF of each channel (one entry when all share one).
    backgrounds : tuple of float
        Background removed from each volume, in volume order (C-order over
        the leading axes).
    device : str
        Device used.
    elapsed_s : float
        Wall time of the whole run.
    std : numpy.ndarray or None
        Per-voxel standard deviation over the posterior samples, the shape of
        ``image`` (flow only).
    notes : tuple of str
        Each volume's run notes (tiling, out-of-memory retries, camera noise, the
        first estimate, the prior's strength), prefixed with its index, e.g. ``"T3 C1: "``.
    """

    image: np.ndarray
    axes: str
    settings: DeconvolutionSettings
    psfs: tuple[PreparedPSF, ...]
    backgrounds: tuple[float, ...]
    device: str
    elapsed_s: float
    std: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable record of how the result was made."""
        return {
            "deconflow_version": __version__,
            "torch_version": torch.__version__,
            "axes": self.axes,
            "settings": self.settings.to_dict(),
            "backgrounds": list(self.backgrounds),
            "device": self.device,
            "elapsed_s": round(self.elapsed_s, 3),
            "psf_shapes": [list(p.data.shape) for p in self.psfs],
            "psf_notes": [list(p.notes) for p in self.psfs],
            "run_notes": list(self.notes),
        }


def iter_deconvolve_hyperstack(
    image: np.ndarray,
    psf: np.ndarray | Sequence[np.ndarray],
    settings: DeconvolutionSettings | None = None,
    *,
    axes: str = "ZYX",
) -> Iterator[Progress | HyperstackResult]:
    """Deconvolve every volume of a T/C hyperstack, yielding progress, then one result.

    Parameters
    ----------
    image : numpy.ndarray
        Data with axes ``axes`` (e.g. ``TCZYX``); not modified.
    psf : numpy.ndarray or sequence of numpy.ndarray
        One PSF for all channels, or one per channel (in channel order).
    settings : DeconvolutionSettings, optional
        Settings shared by all volumes.
    axes : str
        Axis letters of ``image``.

    Yields
    ------
    Progress or HyperstackResult
        Progress events (with ``volume``/``volumes`` set), then the result.
    """
    settings = settings or DeconvolutionSettings()
    start = time.perf_counter()
    data = np.asarray(image)
    leading, spatial = split_axes(axes, data.ndim)
    lead_shape = data.shape[: len(leading)]
    n_channels = lead_shape[leading.index("C")] if "C" in leading else 1
    psfs = [psf] if isinstance(psf, np.ndarray) else list(psf)
    for p in psfs:
        if np.ndim(p) != len(spatial):
            raise DeconflowError(
                f"The image's volumes are {len(spatial)}D ({spatial}) but a PSF is "
                f"{np.ndim(p)}D {np.shape(p)}; give each PSF the volumes' axes "
                f"(a {len(spatial)}D bead stack)."
            )
    if len(psfs) not in (1, n_channels):
        raise DeconflowError(
            f"Got {len(psfs)} PSFs for {n_channels} channels; give one PSF for all channels "
            "or one per channel."
        )
    image_voxel = check_voxel_size(settings.voxel_size_um, len(spatial), "voxel_size")
    # refused alone, as for a single stack: the inner runs would never see it
    psf_voxel = psf_voxel_size_or_image(
        image_voxel,
        check_voxel_size(settings.psf_voxel_size_um, len(spatial), "psf_voxel_size"),
    )
    spatial_shape = data.shape[len(leading) :]
    prepared = [prepared_psf(p, spatial_shape, settings, image_voxel, psf_voxel) for p in psfs]
    # prepared PSFs already sit at the image's voxel size: the inner runs only normalise them
    inner = dataclasses.replace(settings, prepare_psf=False, psf_voxel_size_um=image_voxel)
    out = np.empty(data.shape, dtype=np.float32)
    std: np.ndarray | None = None
    indices = list(itertools.product(*(range(n) for n in lead_shape)))
    backgrounds: list[float] = []
    notes: list[str] = []
    device = ""
    for number, index in enumerate(indices):
        channel = index[leading.index("C")] if "C" in leading else 0
        kernel = prepared[channel if len(prepared) > 1 else 0].data
        result: Result | None = None
        for event in iter_deconvolve(data[index], kernel, inner):
            if isinstance(event, Result):
                result = event
            else:
                yield dataclasses.replace(event, volume=number, volumes=len(indices))
        if result is None:  # iter_deconvolve always ends with a result
            raise RuntimeError("a volume ended without a result")
        out[index] = result.image
        if result.std is not None:  # flow: every volume has one
            if std is None:
                std = np.zeros(data.shape, dtype=np.float32)
            std[index] = result.std
        backgrounds.append(result.background)
        label = " ".join(f"{axis}{i}" for axis, i in zip(leading, index, strict=True))
        notes.extend(f"{label}: {note}" if label else note for note in result.notes)
        device = result.device
    yield HyperstackResult(
        image=out,
        axes=leading + spatial,
        # the voxel sizes that applied, checked and filled in, as a single stack's Result has
        settings=dataclasses.replace(
            settings, voxel_size_um=image_voxel, psf_voxel_size_um=psf_voxel
        ),
        psfs=tuple(prepared),
        backgrounds=tuple(backgrounds),
        device=device,
        elapsed_s=time.perf_counter() - start,
        std=std,
        notes=tuple(notes),
    )
