"""The deconvolution engine: one generator that yields progress, then the result.

:func:`iter_deconvolve` is the only place a deconvolution is run; the napari
widget wraps it in ``thread_worker`` and the CLI in a progress bar.
:func:`deconvolve` consumes it for scripts. Stopping the iteration (closing the
generator) cancels the run between two steps; nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from deconflow._device import resolve_device
from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow._validate import as_float_image, check_voxel_size
from deconflow._version import __version__
from deconflow.config import DeconvolutionSettings
from deconflow.physics.blur import ConvolutionOperator
from deconflow.physics.noise import estimate_background
from deconflow.psf.measured import PreparedPSF, prepare_psf, resample_psf
from deconflow.solvers import RichardsonLucyTV

__all__ = ["Progress", "Result", "deconvolve", "iter_deconvolve", "run_to_result"]

Stage = Literal["psf", "operator", "solve"]


@dataclass(frozen=True)
class Progress:
    """A progress event: ``step`` of ``total`` in ``stage``, for volume ``volume`` of ``volumes``.

    ``volume``/``volumes`` count the 3D (or 2D) volumes of a hyperstack (channels
    times time points, see :func:`deconflow.hyperstack.iter_deconvolve_hyperstack`);
    a single stack is volume 0 of 1.
    """

    stage: Stage
    step: int
    total: int
    message: str = ""
    volume: int = 0
    volumes: int = 1


@dataclass(frozen=True)
class Result:
    """The outcome of a deconvolution.

    Attributes
    ----------
    image : numpy.ndarray
        float32, the input's shape, in the input's intensity units with the
        background removed.
    settings : DeconvolutionSettings
        The settings used (with the voxel sizes that applied).
    psf : PreparedPSF
        The PSF the forward model used, and what was done to it.
    background : float
        Background subtracted (estimated or given), in the image's units.
    device : str
        Device the computation ran on.
    elapsed_s : float
        Wall time of the run in seconds.
    """

    image: np.ndarray
    settings: DeconvolutionSettings
    psf: PreparedPSF
    background: float
    device: str
    elapsed_s: float

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable record of how the result was made."""
        return {
            "deconflow_version": __version__,
            "torch_version": torch.__version__,
            "settings": self.settings.to_dict(),
            "background": self.background,
            "device": self.device,
            "elapsed_s": round(self.elapsed_s, 3),
            "psf_shape": list(self.psf.data.shape),
            "psf_notes": list(self.psf.notes),
        }


def prepared_psf(
    psf: np.ndarray,
    image_shape: tuple[int, ...],
    settings: DeconvolutionSettings,
    image_voxel: VoxelSize | None,
    psf_voxel: VoxelSize | None,
) -> PreparedPSF:
    """Prepare (or, with ``settings.prepare_psf=False``, only normalise and resample) a PSF."""
    if settings.prepare_psf:
        return prepare_psf(
            psf,
            voxel_size_um=psf_voxel,
            target_voxel_size_um=image_voxel,
            max_shape=image_shape,
        )
    total = float(psf.sum(dtype=np.float64))
    if not total > 0:
        raise DeconflowError(
            f"The PSF sums to {total:g}; it must be positive. Pass the bead stack with "
            "prepare_psf=True (the default) to subtract its background."
        )
    data = psf.astype(np.float64) / total
    notes: list[str] = []
    if image_voxel is not None and psf_voxel is not None and image_voxel != psf_voxel:
        data = resample_psf(data, psf_voxel, image_voxel)
        notes.append(f"resampled from voxel size {psf_voxel} um to {image_voxel} um")
    return PreparedPSF(
        data=data.astype(np.float32),
        voxel_size_um=image_voxel,
        background=0.0,
        noise_sigma=0.0,
        shift_vox=(0.0,) * psf.ndim,
        saturated_voxels=0,
        notes=tuple(notes),
    )


def iter_deconvolve(
    image: np.ndarray, psf: np.ndarray, settings: DeconvolutionSettings | None = None
) -> Iterator[Progress | Result]:
    """Deconvolve ``image``, yielding :class:`Progress` events and finally one :class:`Result`.

    Parameters
    ----------
    image : numpy.ndarray
        2D (Y, X) or 3D (Z, Y, X) stack, any real dtype; it is not modified.
    psf : numpy.ndarray
        Measured bead stack or PSF with as many axes as ``image``.
    settings : DeconvolutionSettings, optional
        Method and options; defaults to Richardson–Lucy with automatic
        background.

    Yields
    ------
    Progress or Result
        Progress events, then the result as the last item.

    Raises
    ------
    DeconflowError
        For invalid input or settings.
    """
    settings = settings or DeconvolutionSettings()
    start = time.perf_counter()
    data = as_float_image(image, "image")
    psf_arr = as_float_image(psf, "PSF")
    if psf_arr.ndim != data.ndim:
        raise DeconflowError(
            f"The image is {data.ndim}D {data.shape} but the PSF is {psf_arr.ndim}D "
            f"{psf_arr.shape}; give a PSF with the same axes as the image "
            "(a 3D bead stack for a 3D image)."
        )
    image_voxel = check_voxel_size(settings.voxel_size_um, data.ndim, "voxel_size")
    psf_voxel = check_voxel_size(settings.psf_voxel_size_um, data.ndim, "psf_voxel_size")
    if psf_voxel is None:
        psf_voxel = image_voxel
    if image_voxel is None and settings.psf_voxel_size_um is not None:
        raise DeconflowError(
            "psf_voxel_size was given without voxel_size; give the image's voxel size too so "
            "the PSF can be resampled to it."
        )
    device = resolve_device(settings.device)

    yield Progress("psf", 0, 1, "preparing the PSF")
    prepared = prepared_psf(psf_arr, data.shape, settings, image_voxel, psf_voxel)
    background = (
        settings.background if settings.background is not None else estimate_background(data)
    )
    yield Progress("operator", 0, 1, "building the forward model")
    operator = ConvolutionOperator(prepared.data, data.shape, device=device, dtype=torch.float32)
    y = torch.from_numpy(data).to(device)

    solver = settings.solver
    if isinstance(solver, RichardsonLucyTV) and solver.spacing is None and image_voxel:
        smallest = min(image_voxel)
        solver = dataclasses.replace(solver, spacing=tuple(v / smallest for v in image_voxel))
    total = solver.total_steps
    estimate: torch.Tensor | None = None
    for step, iterate in enumerate(solver.iterate(y, operator, background), start=1):
        estimate = iterate
        yield Progress("solve", step, total, f"{settings.method} step {step}/{total}")
    if estimate is None:  # every solver yields at least once; guards a broken one
        raise RuntimeError("solver produced no estimate")
    out = operator.crop_to_image(estimate).detach().to("cpu", torch.float32).numpy().copy()
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    used = dataclasses.replace(settings, voxel_size_um=image_voxel, psf_voxel_size_um=psf_voxel)
    yield Result(
        image=out,
        settings=used,
        psf=prepared,
        background=float(background),
        device=str(device),
        elapsed_s=time.perf_counter() - start,
    )


def run_to_result(events: Iterator[Progress | Result]) -> Result:
    """Consume an :func:`iter_deconvolve` generator and return its :class:`Result`."""
    for event in events:
        if isinstance(event, Result):
            return event
    raise RuntimeError("the deconvolution ended without a result")


def deconvolve(
    image: np.ndarray,
    psf: np.ndarray,
    *,
    method: str = "rl",
    voxel_size: VoxelSize | None = None,
    psf_voxel_size: VoxelSize | None = None,
    device: str = "auto",
    **options: Any,
) -> np.ndarray:
    """Deconvolve a 2D or 3D fluorescence stack with a measured or theoretical PSF.

    Parameters
    ----------
    image : numpy.ndarray
        2D (Y, X) or 3D (Z, Y, X) stack, any real dtype. Not modified.
    psf : numpy.ndarray
        Raw bead stack or PSF with the same axes as ``image``. By default it
        is prepared (background, centring, crop, sum 1; see
        :func:`deconflow.psf.prepare_psf`).
    method : {"rl", "rl-tv", "wiener"}
        Richardson–Lucy (default), Richardson–Lucy with total variation, or
        Wiener–Tikhonov.
    voxel_size : tuple of float, optional
        Image voxel size (z, y, x) in micrometres.
    psf_voxel_size : tuple of float, optional
        PSF voxel size; taken equal to ``voxel_size`` when only that is given.
        When they differ the PSF is resampled to the image's voxel size.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    **options
        Method options: ``iterations`` and ``accelerate`` (rl, rl-tv),
        ``tv_weight`` (rl-tv), ``regularization`` (wiener), and for every
        method ``background`` (a number, or ``"auto"``) and ``prepare_psf``.

    Returns
    -------
    numpy.ndarray
        float32 array of the image's shape, in the image's intensity units with
        the background removed.

    Raises
    ------
    DeconflowError
        For invalid input, an unknown method or option, or an unavailable device.
    """
    settings = DeconvolutionSettings.from_options(
        method, voxel_size=voxel_size, psf_voxel_size=psf_voxel_size, device=device, **options
    )
    return run_to_result(iter_deconvolve(image, psf, settings)).image
