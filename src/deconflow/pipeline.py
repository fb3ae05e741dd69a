"""The deconvolution engine: one generator that yields progress, then the result.

:func:`iter_deconvolve` is the only place a deconvolution is run; the napari
widget wraps it in ``thread_worker`` and the CLI in a progress bar.
:func:`deconvolve` consumes it for scripts. Stopping the iteration (closing the
generator) cancels the run between two steps; nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Iterator
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
from deconflow.physics.noise import estimate_background, estimate_noise_sigma
from deconflow.psf.measured import PreparedPSF, prepare_psf, resample_psf
from deconflow.solvers import RichardsonLucy, RichardsonLucyTV, Wiener
from deconflow.solvers.wiener import noise_to_signal_regularization
from deconflow.tiling import TilePlan, blend_weight, estimate_bytes, memory_budget_bytes, plan_tiles

__all__ = ["Progress", "Result", "deconvolve", "iter_deconvolve", "run_to_result"]

Stage = Literal["psf", "operator", "solve"]
Solver = RichardsonLucy | RichardsonLucyTV | Wiener


@dataclass(frozen=True)
class Progress:
    """A progress event: ``step`` of ``total`` in ``stage``, for volume ``volume`` of ``volumes``.

    ``volume``/``volumes`` count the 3D (or 2D) volumes of a hyperstack (channels
    times time points, see :func:`deconflow.hyperstack.iter_deconvolve_hyperstack`);
    a single stack is volume 0 of 1. ``tile``/``tiles`` count the tiles of a
    stack too large for the memory budget.
    """

    stage: Stage
    step: int
    total: int
    message: str = ""
    volume: int = 0
    volumes: int = 1
    tile: int = 0
    tiles: int = 1


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
    notes : tuple of str
        What the run decided on its own (tiling, an out-of-memory retry).
    """

    image: np.ndarray
    settings: DeconvolutionSettings
    psf: PreparedPSF
    background: float
    device: str
    elapsed_s: float
    notes: tuple[str, ...] = ()

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
            "run_notes": list(self.notes),
        }


def prepared_psf(
    psf: np.ndarray,
    image_shape: tuple[int, ...],
    settings: DeconvolutionSettings,
    image_voxel: VoxelSize | None,
    psf_voxel: VoxelSize | None,
) -> PreparedPSF:
    """Validate and prepare (with ``prepare_psf=False`` only normalise and resample) a PSF.

    The raw array, not a float copy, goes to :func:`prepare_psf`: saturation is
    recognised from the integer dtype's ceiling.
    """
    checked = as_float_image(psf, "PSF")
    if settings.prepare_psf:
        return prepare_psf(
            np.asarray(psf),
            voxel_size_um=psf_voxel,
            target_voxel_size_um=image_voxel,
            max_shape=image_shape,
        )
    total = float(checked.sum(dtype=np.float64))
    if not total > 0:
        raise DeconflowError(
            f"The PSF sums to {total:g}; it must be positive. Pass the bead stack with "
            "prepare_psf=True (the default) to subtract its background."
        )
    data = checked.astype(np.float64) / total
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
    psf_arr = np.asarray(psf)
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
    solver = _solver_for_run(settings, data, background, image_voxel)
    budget = (
        int(settings.memory_budget_gb * 1e9)
        if settings.memory_budget_gb is not None
        else memory_budget_bytes(device)
    )
    plan = plan_tiles(
        data.shape, prepared.data.shape, settings.method, budget, max_tile_shape=settings.tile_shape
    )
    notes: list[str] = []
    if plan.count > 1:
        notes.append(_tiling_note(plan, data.shape, prepared.data.shape, settings, budget))
    try:
        out = yield from _solve_tiles(
            data, prepared.data, solver, plan, device, background, settings.method
        )
    except torch.cuda.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = plan_tiles(
            data.shape,
            prepared.data.shape,
            settings.method,
            budget,
            max_tile_shape=tuple(max(t // 2, 8) for t in plan.tile_shape),
        )
        if smaller.count == plan.count:
            raise DeconflowError(_oom_message(device, plan)) from None
        notes.append(
            f"ran out of {device} memory with {plan.count} tile(s); retried with "
            f"{smaller.count} smaller tiles"
        )
        try:
            out = yield from _solve_tiles(
                data, prepared.data, solver, smaller, device, background, settings.method
            )
        except torch.cuda.OutOfMemoryError:
            raise DeconflowError(_oom_message(device, smaller)) from None
    used = dataclasses.replace(settings, voxel_size_um=image_voxel, psf_voxel_size_um=psf_voxel)
    yield Result(
        image=out,
        settings=used,
        psf=prepared,
        background=float(background),
        device=str(device),
        elapsed_s=time.perf_counter() - start,
        notes=tuple(notes),
    )


def _solver_for_run(
    settings: DeconvolutionSettings,
    data: np.ndarray,
    background: float,
    image_voxel: VoxelSize | None,
) -> Solver:
    """Fill in what a solver derives from the whole stack, so that every tile agrees."""
    solver = settings.solver
    if isinstance(solver, RichardsonLucyTV) and solver.spacing is None and image_voxel:
        smallest = min(image_voxel)
        solver = dataclasses.replace(solver, spacing=tuple(v / smallest for v in image_voxel))
    if isinstance(solver, Wiener) and solver.regularization is None:
        residual = data - background
        lam = noise_to_signal_regularization(
            torch.from_numpy(residual), estimate_noise_sigma(residual)
        )
        solver = dataclasses.replace(solver, regularization=lam)
    return solver


def _solve_tiles(
    data: np.ndarray,
    psf: np.ndarray,
    solver: Solver,
    plan: TilePlan,
    device: torch.device,
    background: float,
    method: str,
) -> Generator[Progress, None, np.ndarray]:
    """Deconvolve tile by tile, yielding progress; return the blended float32 result."""
    if plan.count == 1:
        yield Progress("operator", 0, 1, "building the forward model")
        return (yield from _solve_block(data, psf, solver, device, background, method, 0, 1))
    accumulated = np.zeros(data.shape, dtype=np.float32)
    weights = np.zeros(data.shape, dtype=np.float32)
    for number, tile in enumerate(plan.tiles):
        yield Progress(
            "operator", 0, 1, f"tile {number + 1}/{plan.count}", tile=number, tiles=plan.count
        )
        block = yield from _solve_block(
            data[tile], psf, solver, device, background, method, number, plan.count
        )
        weight = blend_weight(tile, data.shape, plan.overlap)
        accumulated[tile] += weight * block
        weights[tile] += weight
    return accumulated / weights


def _solve_block(
    block: np.ndarray,
    psf: np.ndarray,
    solver: Solver,
    device: torch.device,
    background: float,
    method: str,
    tile: int,
    tiles: int,
) -> Generator[Progress, None, np.ndarray]:
    operator = ConvolutionOperator(psf, block.shape, device=device, dtype=torch.float32)
    y = torch.from_numpy(np.ascontiguousarray(block)).to(device)
    total = solver.total_steps
    estimate: torch.Tensor | None = None
    for step, iterate in enumerate(solver.iterate(y, operator, background), start=1):
        estimate = iterate
        where = f" (tile {tile + 1}/{tiles})" if tiles > 1 else ""
        yield Progress(
            "solve", step, total, f"{method} step {step}/{total}{where}", tile=tile, tiles=tiles
        )
    if estimate is None:  # every solver yields at least once; guards a broken one
        raise RuntimeError("solver produced no estimate")
    out = operator.crop_to_image(estimate).detach().to("cpu", torch.float32).numpy().copy()
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if not isinstance(solver, Wiener) or solver.clip_negative:
        # the model is non-negative; FFT round-off can leave values like -1e-20
        np.maximum(out, 0.0, out=out)
    return out


def _tiling_note(
    plan: TilePlan,
    image_shape: tuple[int, ...],
    psf_shape: tuple[int, ...],
    settings: DeconvolutionSettings,
    budget: int,
) -> str:
    whole = estimate_bytes(image_shape, psf_shape, settings.method)
    reason = (
        f"tile_shape {settings.tile_shape}"
        if settings.tile_shape is not None and whole <= budget
        else f"the whole stack needs ~{whole / 1e9:.1f} GB, over the {budget / 1e9:.1f} GB budget"
    )
    return (
        f"processed in {plan.count} overlapping tiles of up to {plan.tile_shape} voxels "
        f"(overlap {plan.overlap} per side) because {reason}"
    )


def _oom_message(device: torch.device, plan: TilePlan) -> str:
    return (
        f"Out of {device} memory even with {plan.count} tiles of up to {plan.tile_shape} voxels. "
        "Set a smaller tile_shape (e.g. (32, 128, 128)) or memory_budget_gb, close other "
        "programs using the device, or run with device='cpu'."
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
