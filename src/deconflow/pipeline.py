"""The deconvolution engine: one generator that yields progress, then the result.

:func:`iter_deconvolve` is the only place a deconvolution is run; the napari
widget wraps it in ``thread_worker`` and the CLI in a progress bar.
:func:`deconvolve` consumes it for scripts. Stopping the iteration (closing the
generator) cancels the run between two steps; nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deconflow._device import resolve_device
from deconflow._errors import DeconflowError, DeconflowWarning
from deconflow._execute import BlockOutput, classical_block_solver, run_plan
from deconflow._flow_choice import iter_choose_strength
from deconflow._flow_run import (
    calibrate_noise,
    flow_block_solver,
    iter_cross_validated_iterations,
    load_flow_prior,
    make_flow_context,
    samples_at_once,
)
from deconflow._progress import Progress, Stage
from deconflow._types import VoxelSize
from deconflow._validate import as_float_image, check_voxel_size, psf_voxel_size_or_image
from deconflow._version import __version__
from deconflow.config import DeconvolutionSettings
from deconflow.physics.noise import estimate_background, estimate_noise_sigma
from deconflow.psf.measured import PreparedPSF, prepare_psf, resample_psf
from deconflow.solvers import RichardsonLucy, RichardsonLucyTV, Wiener
from deconflow.solvers.flow import FlowDeconvolution
from deconflow.solvers.wiener import noise_to_signal_regularization
from deconflow.tiling import TilePlan, estimate_bytes, memory_budget_bytes, plan_tiles

__all__ = [
    "Progress",
    "Result",
    "UncertaintyResult",
    "deconvolve",
    "deconvolve_with_uncertainty",
    "iter_deconvolve",
    "run_to_result",
]


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
    std : numpy.ndarray or None
        Per-voxel standard deviation over the posterior samples (flow only).
    samples : numpy.ndarray or None
        The samples, ``(K, *image.shape)``, when the flow settings keep them.
    residual : numpy.ndarray or None
        Data-consistency residual of ``image`` in noise sigmas (flow only).
    """

    image: np.ndarray
    settings: DeconvolutionSettings
    psf: PreparedPSF
    background: float
    device: str
    elapsed_s: float
    notes: tuple[str, ...] = ()
    std: np.ndarray | None = None
    samples: np.ndarray | None = None
    residual: np.ndarray | None = None

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
    data: np.ndarray = checked.astype(np.float64) / total
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
    if settings.tile_shape is not None and len(settings.tile_shape) != data.ndim:
        order = "(z, y, x)" if data.ndim == 3 else "(y, x)"
        raise DeconflowError(
            f"tile_shape {settings.tile_shape} has {len(settings.tile_shape)} entries but the "
            f"image has {data.ndim} axes; give one size per axis, ordered {order}, or None."
        )
    psf_voxel = psf_voxel_size_or_image(image_voxel, psf_voxel)
    device = resolve_device(settings.device)

    yield Progress("psf", 0, 1, "preparing the PSF")
    prepared = prepared_psf(psf_arr, data.shape, settings, image_voxel, psf_voxel)
    background = (
        settings.background if settings.background is not None else estimate_background(data)
    )
    brightest = float(data.max())
    if settings.background is not None and 0 < background >= brightest:
        # nothing is left above it: every method returns ~0, which looked like a result.
        # A warning, not an error: one dark time point must not fail a whole hyperstack
        warnings.warn(
            f"The background given, {background:g}, is at or above the image's brightest "
            f"value ({brightest:g}), so nothing is left above it and the result is close to zero. "
            "Give the background in the image's own units (e.g. the camera offset in counts), "
            "or leave it out to estimate it.",
            DeconflowWarning,
            stacklevel=2,
        )
    if settings.background is None and isinstance(
        settings.solver, RichardsonLucy | RichardsonLucyTV
    ):
        # RL's Poisson model needs b >= 0; on offset-subtracted data (noise around 0) the
        # estimate lands a little below 0, which means no background at all
        background = max(background, 0.0)
    budget = (
        int(settings.memory_budget_gb * 1e9)
        if settings.memory_budget_gb is not None
        else memory_budget_bytes(device)
    )
    psf_shape = prepared.data.shape
    plan = plan_tiles(
        data.shape, psf_shape, settings.method, budget, max_tile_shape=settings.tile_shape
    )
    notes: list[str] = []
    if plan.count > 1:
        notes.append(_tiling_note(plan, data.shape, psf_shape, settings, budget))
    if isinstance(settings.solver, FlowDeconvolution):
        prior = load_flow_prior(settings.solver, image_voxel, device)
        # only a background the user gave bounds the offset; an estimated one is read off
        # the same darkest voxels as the offset
        noise = calibrate_noise(data, prepared.data, settings.solver, settings.background)
        notes.append(
            f"camera noise: gain {noise.gain:.3g} ADU/photon, offset {noise.offset:.4g} ADU, "
            f"read noise {noise.read_sigma:.3g} ADU"
            + (" (estimated)" if settings.solver.gain is None else "")
        )
        # the first estimate (the flow's starting point and the prior's intensity scale)
        # is RL on shifted-Poisson photon counts, stopped where held-out photons say
        counts = noise.shifted_counts(torch.from_numpy(data)).numpy()
        level = noise.shifted_background(background)
        iterations = settings.solver.first_iterations
        if iterations is None:
            yield Progress("estimate", 0, 1, "choosing the RL iteration count (cross-validation)")
            iterations = yield from iter_cross_validated_iterations(
                counts, prepared.data, level, device
            )
            notes.append(
                f"first estimate: {iterations} RL iterations, chosen by cross-validation "
                "on held-out photons"
            )
        estimate = yield from _relabel(
            run_plan(
                counts,
                plan,
                classical_block_solver(
                    prepared.data, RichardsonLucy(iterations), device, level, "rl"
                ),
                device,
                notes,
                psf_shape=psf_shape,
                method="rl",
            ),
            "estimate",
            "first estimate: ",
        )
        # photons -> the image's units above the background
        first = estimate.mean * np.float32(noise.gain)
        context = make_flow_context(first, iterations, noise, settings.solver, prior)
        if settings.solver.sampler == "poisson" and settings.solver.choose_strength:
            yield Progress("estimate", 0, 1, "choosing how far to trust the prior")
            choice = yield from iter_choose_strength(
                counts,
                prepared.data,
                level,
                iterations,
                context.normalization,
                noise.gain,
                prior,
                settings.solver,
                device,
            )
            notes.append(choice.note())
            context = dataclasses.replace(context, settings=choice.settings)
        at_once = samples_at_once(
            settings.solver.samples,
            device,
            math.prod(plan.tile_shape),
            estimate_bytes(plan.tile_shape, psf_shape, "flow"),
            budget,
        )
        if at_once > 1:
            notes.append(f"posterior samples drawn {at_once} at a time (one network call)")
        solve = flow_block_solver(context, prepared.data, device, background, at_once)
    else:
        solver = _solver_for_run(settings, data, background, image_voxel)
        solve = classical_block_solver(prepared.data, solver, device, background, settings.method)
    output = yield from run_plan(
        data, plan, solve, device, notes, psf_shape=psf_shape, method=settings.method
    )
    used = dataclasses.replace(settings, voxel_size_um=image_voxel, psf_voxel_size_um=psf_voxel)
    yield Result(
        image=output.mean,
        settings=used,
        psf=prepared,
        background=float(background),
        device=str(device),
        elapsed_s=time.perf_counter() - start,
        notes=tuple(notes),
        std=output.std,
        samples=output.samples,
        residual=output.residual,
    )


def _relabel(
    events: Generator[Progress, None, BlockOutput], stage: Stage, prefix: str
) -> Generator[Progress, None, BlockOutput]:
    """Pass ``events`` on under another stage name, messages prefixed; return their result."""
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        yield dataclasses.replace(event, stage=stage, message=prefix + event.message)


def _solver_for_run(
    settings: DeconvolutionSettings,
    data: np.ndarray,
    background: float,
    image_voxel: VoxelSize | None,
) -> RichardsonLucy | RichardsonLucyTV | Wiener:
    """Fill in what a solver derives from the whole stack, so that every tile agrees."""
    solver = settings.solver
    if isinstance(solver, FlowDeconvolution):  # handled by the caller
        raise TypeError("flow settings have no classical solver")
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
    method : {"rl", "rl-tv", "wiener", "flow"}
        Richardson–Lucy (default), Richardson–Lucy with total variation,
        Wiener–Tikhonov, or posterior sampling with the flow prior.
    voxel_size : tuple of float, optional
        Image voxel size (z, y, x) in micrometres.
    psf_voxel_size : tuple of float, optional
        PSF voxel size; taken equal to ``voxel_size`` when only that is given.
        When they differ the PSF is resampled to the image's voxel size.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    **options
        Method options: ``iterations`` (rl, rl-tv, wiener), ``accelerate``
        (rl, rl-tv), ``tv_weight`` and ``spacing`` (rl-tv), ``regularization``
        and ``clip_negative`` (wiener), the fields of
        :class:`~deconflow.solvers.flow.FlowDeconvolution` (flow: ``steps``,
        ``samples``, ``prior_weight``, ``seed``, ...), and for every method
        ``background`` (a number, or ``"auto"``), ``prepare_psf``, ``tile_shape``
        and ``memory_budget_gb``.

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


@dataclass(frozen=True)
class UncertaintyResult:
    """Posterior summary of a flow deconvolution.

    Attributes
    ----------
    mean : numpy.ndarray
        Mean of the posterior samples (the answer), float32, image shape and units.
    std : numpy.ndarray
        Per-voxel standard deviation over the samples: where the prior, not
        the data, decides.
    samples : numpy.ndarray or None
        ``(K, *shape)`` samples when ``keep_samples=True``.
    residual : numpy.ndarray
        Data-consistency residual of the mean in noise sigmas: about N(0, 1)
        where the model explains the measurement; structure in it means the
        result disagrees with the data there.
    result : Result
        The full result (settings, PSF, notes, provenance).
    """

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray | None
    residual: np.ndarray
    result: Result


def deconvolve_with_uncertainty(
    image: np.ndarray,
    psf: np.ndarray,
    *,
    samples: int = 4,
    voxel_size: VoxelSize | None = None,
    psf_voxel_size: VoxelSize | None = None,
    device: str = "auto",
    **options: Any,
) -> UncertaintyResult:
    """Flow deconvolution with ``samples`` posterior samples: mean, std and residual.

    Takes the same arguments as :func:`deconvolve` with ``method="flow"``
    (``steps``, ``prior_weight``, ``weights``, ``seed``, ``keep_samples``,
    camera ``gain`` / ``camera_offset`` / ``read_sigma``, ...).

    Returns
    -------
    UncertaintyResult
        Mean, standard deviation, optional samples and residual.

    Raises
    ------
    DeconflowError
        If a ``method`` other than ``"flow"`` is given: only the flow draws posterior
        samples.
    """
    # method="flow" says what this does anyway (a script switching from deconvolve keeps
    # it); any other method has no posterior samples to give
    if options.get("method", "flow") != "flow":
        raise DeconflowError(
            f"deconvolve_with_uncertainty always uses method='flow' (got "
            f"method={options['method']!r}): only the flow draws posterior samples. Drop "
            "method=, or call deconvolve(image, psf, method=...) for a classical answer."
        )
    options.pop("method", None)
    settings = DeconvolutionSettings.from_options(
        "flow",
        voxel_size=voxel_size,
        psf_voxel_size=psf_voxel_size,
        device=device,
        samples=samples,
        **options,
    )
    result = run_to_result(iter_deconvolve(image, psf, settings))
    if result.std is None or result.residual is None:  # the flow path always fills both
        raise RuntimeError("flow run returned no uncertainty")
    return UncertaintyResult(
        mean=result.image,
        std=result.std,
        samples=result.samples,
        residual=result.residual,
        result=result,
    )
