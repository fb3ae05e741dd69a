"""What one run of the widget computes, separated from the widget that gathers it.

:func:`run_events` is the generator the widget hands to napari's
``thread_worker``: it only forwards the pipeline's events, so stopping the
worker stops the pipeline between two steps. :func:`show_result` puts the
outcome into the viewer on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image
from napari.viewer import Viewer

from deconflow._errors import DeconflowError
from deconflow._types import DEFAULT_AXES
from deconflow.config import DeconvolutionSettings
from deconflow.hyperstack import HyperstackResult, iter_deconvolve_hyperstack, split_axes
from deconflow.io import read_tiff
from deconflow.pipeline import Progress, Result, iter_deconvolve

__all__ = [
    "Failure",
    "Job",
    "Placement",
    "axes_for_ndim",
    "axes_of_layer",
    "contrast_limits",
    "crop_around",
    "output_name",
    "run_events",
    "show_result",
]


#: Axis labels readers give layers (napari's ``axis_labels``), by the letter they stand for.
_LABEL_AXES = {
    "t": "T",
    "time": "T",
    "c": "C",
    "ch": "C",
    "channel": "C",
    "z": "Z",
    "y": "Y",
    "x": "X",
}


def axes_for_ndim(ndim: int) -> str:
    """Default axis letters of an ``ndim``-dimensional image layer."""
    return DEFAULT_AXES.get(ndim, "")


def axes_of_layer(layer: Image) -> str:
    """Axis letters of ``layer``: from its axis labels when they name axes, else by its ndim.

    A 4D layer is as often a time-lapse (TZYX) as a multichannel stack (CZYX); a reader
    that labels the axes says which, where the number of dimensions cannot.
    """
    labels = [str(label).lower() for label in getattr(layer, "axis_labels", ())]
    axes = "".join(_LABEL_AXES.get(label, "?") for label in labels)
    try:
        split_axes(axes, layer.ndim)
    except DeconflowError:  # napari's default labels ("-3", ...) or ones that are not axes
        return axes_for_ndim(layer.ndim)
    return axes


@dataclass(frozen=True, eq=False)
class Placement:
    """Where a layer's voxels sit in the world: napari's scale, translate, rotate, shear, affine.

    napari maps a data point ``p`` to ``affine(translate + rotate @ shear @ diag(scale) @ p)``;
    an output that copies all five overlays its input, a rotated or deskewed
    (sheared) light-sheet stack included. ``units`` are those the scale is in
    (``None`` before napari 0.6, which has none).
    """

    scale: tuple[float, ...]
    translate: tuple[float, ...]
    rotate: np.ndarray
    shear: np.ndarray  # the full upper-triangular matrix
    affine: np.ndarray  # homogeneous, (ndim + 1) x (ndim + 1)
    units: tuple[str, ...] | None = None

    @classmethod
    def of_layer(
        cls, layer: Image, first_axis: int = 0, offset: Sequence[int] | None = None
    ) -> Placement:
        """Placement of ``layer``'s axes from ``first_axis`` on, for a crop starting at ``offset``.

        The axes before ``first_axis`` (time, channel) are dropped; a transform that mixes
        them with the spatial axes cannot be kept and is cut off.
        """
        ndim = layer.ndim
        keep = slice(first_axis, ndim)
        scale = np.asarray(layer.scale, dtype=float)
        rotate = np.asarray(layer.rotate, dtype=float)
        shear = np.eye(ndim)
        shear[np.triu_indices(ndim, 1)] = np.asarray(layer.shear, dtype=float)
        # a copy: np.asarray returns the layer's own array, which the crop's offset below
        # would shift in place (each preview moved the input layer, and the next preview)
        translate = np.array(layer.translate, dtype=float)
        if offset is not None:
            # the crop's first voxel, mapped through the layer's linear part
            linear = rotate @ shear @ np.diag(scale)
            translate[keep] += linear[keep, keep] @ np.asarray(offset, dtype=float)
        homogeneous = [*range(first_axis, ndim), ndim]
        units = getattr(layer, "units", None)
        return cls(
            scale=tuple(float(v) for v in scale[keep]),
            translate=tuple(float(v) for v in translate[keep]),
            rotate=rotate[keep, keep],
            shear=shear[keep, keep],
            affine=np.asarray(layer.affine.affine_matrix, dtype=float)[
                np.ix_(homogeneous, homogeneous)
            ],
            units=None if units is None else tuple(str(u) for u in units[keep]),
        )

    def apply_to(self, layer: Image) -> None:
        """Place ``layer`` here (its ndim must match)."""
        layer.scale = self.scale
        layer.translate = self.translate
        layer.rotate = self.rotate
        layer.shear = self.shear
        layer.affine = self.affine
        if self.units is not None:
            layer.units = self.units

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``viewer.add_image``."""
        kwargs: dict[str, Any] = {
            "scale": self.scale,
            "translate": self.translate,
            "rotate": self.rotate,
            "shear": self.shear,
            "affine": self.affine,
        }
        if self.units is not None:
            kwargs["units"] = self.units
        return kwargs


@dataclass(frozen=True)
class Job:
    """Everything a run needs, gathered from the widget on the GUI thread.

    Attributes
    ----------
    image : array-like
        The data to deconvolve: the layer's data or a crop of it, possibly lazy
        (dask); it is read into memory in the worker, off the GUI thread.
    axes : str
        Axis letters of ``image`` (``ZYX``, ``CZYX``, ``TCZYX``, ...).
    psf : numpy.ndarray or None
        PSF from a layer; ``None`` when it is read from ``psf_path``.
    psf_path : str or None
        PSF TIFF file, read in the worker.
    settings : DeconvolutionSettings
        Validated settings.
    source : str
        Name of the input layer.
    placement : Placement
        World placement of ``image`` (the input layer's, shifted for a crop).
    preview : bool
        Whether this is a preview of a region.
    psf_channel : int or None
        With a per-channel PSF stack, the one channel to use (previews of one
        channel); ``None`` uses them all.
    """

    image: Any
    axes: str
    psf: np.ndarray | None
    psf_path: str | None
    settings: DeconvolutionSettings
    source: str
    placement: Placement
    preview: bool = False
    psf_channel: int | None = None


def _psf_arrays(job: Job, spatial_ndim: int) -> np.ndarray | list[np.ndarray]:
    psf = job.psf if job.psf is not None else read_tiff(str(job.psf_path)).data
    psf = np.asarray(psf)
    spatial = job.axes[-spatial_ndim:]
    # a stack of per-channel PSFs (channel first) only where there are channels: a 3D PSF
    # for a 2D image is a wrong PSF, not 17 planes of one
    channels = "C" in job.axes[:-spatial_ndim] or job.psf_channel is not None
    if psf.ndim == spatial_ndim + 1 and channels:
        if job.psf_channel is not None:
            if job.psf_channel >= psf.shape[0]:
                raise DeconflowError(
                    f"The PSF stack has {psf.shape[0]} channels; the image's channel "
                    f"{job.psf_channel} has none. Give one PSF per channel, or one for all."
                )
            return psf[job.psf_channel]
        return [psf[c] for c in range(psf.shape[0])]
    if psf.ndim != spatial_ndim:
        per_channel = f", or a {spatial_ndim + 1}D stack of one per channel" if channels else ""
        raise DeconflowError(
            f"The PSF is {psf.ndim}D {psf.shape} but the image's volumes are "
            f"{spatial_ndim}D ({spatial}); give a {spatial_ndim}D PSF{per_channel}, or "
            "correct the image's axes."
        )
    return psf


@dataclass(frozen=True)
class Failure:
    """A run that raised: the exception, handed back as the worker's return value."""

    error: Exception


def run_events(job: Job) -> Generator[Progress, None, Result | HyperstackResult | Failure]:
    """Run the pipeline for ``job``, yielding its progress and returning its result.

    Parameters
    ----------
    job : Job
        What to compute.

    Yields
    ------
    Progress
        The pipeline's progress events.

    Returns
    -------
    Result or HyperstackResult or Failure
        The outcome (``HyperstackResult`` for inputs with T or C axes), or the
        error that stopped it.
    """
    # Errors are returned, not raised: napari's workers re-raise what they catch in the GUI
    # thread, and the widget shows them as one notification instead.
    try:
        spatial_ndim = 3 if job.axes.endswith("ZYX") else 2
        psf = _psf_arrays(job, spatial_ndim)
        image = np.asarray(job.image)
        events: Iterator[Progress | Result | HyperstackResult]
        if len(job.axes) == spatial_ndim and isinstance(psf, np.ndarray):
            events = iter_deconvolve(image, psf, job.settings)
        else:
            events = iter_deconvolve_hyperstack(image, psf, job.settings, axes=job.axes)
        for event in events:
            if isinstance(event, Progress):
                yield event
            else:
                return event
        raise RuntimeError("the deconvolution ended without a result")
    except Exception as exc:  # every failure reaches the user, none the terminal
        return Failure(exc)


def output_name(source: str, method: str, preview: bool = False, std: bool = False) -> str:
    """Name of the output layer of ``method`` run on layer ``source`` (or of its ``std``)."""
    kind = "preview" if preview else "deconvolved"
    return f"{source} {kind}{' std' if std else ''} ({method})"


def contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Display range from 0 to the 99.9th percentile, so a few hot voxels do not dim it."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    low = min(float(finite.min()), 0.0)
    high = float(np.percentile(finite, 99.9))
    if not high > low:
        high = float(finite.max()) if finite.max() > low else low + 1.0
    return low, high


def show_result(viewer: Viewer, job: Job, result: Result | HyperstackResult) -> Image:
    """Add the result as a layer placed like the input, or replace the previous one.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    job : Job
        The job that produced ``result``.
    result : Result or HyperstackResult
        Its outcome.

    Returns
    -------
    napari.layers.Image
        The output layer.
    """
    name = output_name(job.source, job.settings.method, job.preview)
    data = result.image.astype(np.float32, copy=False)
    metadata: dict[str, Any] = {
        "deconflow": {
            "source": job.source,
            "axes": job.axes,
            "preview": job.preview,
            "settings": job.settings.to_dict(),
            "provenance": result.provenance(),
        }
    }
    std = getattr(result, "std", None)  # posterior spread of sampling methods (flow)
    if std is not None:
        # built, not edited from the name: a source named "cells (flow)" has "(flow)" twice
        std_name = output_name(job.source, job.settings.method, job.preview, std=True)
        _put_layer(viewer, std_name, std.astype(np.float32), job, metadata, visible=False)
    return _put_layer(viewer, name, data, job, metadata, visible=True)


def _put_layer(
    viewer: Viewer,
    name: str,
    data: np.ndarray,
    job: Job,
    metadata: dict[str, Any],
    visible: bool,
) -> Image:
    """Replace the data of layer ``name`` (when it exists with that ndim) or add it."""
    limits = contrast_limits(data)
    # the slider's range spans the data, so the brightest voxels above the 99.9th percentile
    # can be shown: napari takes the range from the limits given (and a replaced layer
    # kept the range of its first data, which may be 100 times wider than the new)
    finite = data[np.isfinite(data)]
    span = (limits[0], max(limits[1], float(finite.max()) if finite.size else limits[1]))
    old = viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401 - no .get
    if isinstance(old, Image) and old.ndim == data.ndim:
        layer = old
        # placement first: a new shape under the old scale would flash misplaced
        job.placement.apply_to(layer)
        layer.data = data
        layer.metadata = metadata
        layer.contrast_limits_range = span
        layer.contrast_limits = limits
        return layer
    if old is not None:
        viewer.layers.remove(old)
    layer = viewer.add_image(
        data,
        name=name,
        **job.placement.as_kwargs(),
        metadata=metadata,
        contrast_limits=limits,
        colormap="gray",
        blending="additive",
        visible=visible,
    )
    layer.contrast_limits_range = span
    return layer


def crop_around(
    shape: Sequence[int], centre: Sequence[float], size: Sequence[int]
) -> tuple[slice, ...]:
    """Slices of at most ``size`` voxels per axis around ``centre``, inside ``shape``."""
    slices = []
    for n, c, s in zip(shape, centre, size, strict=True):
        s = min(int(s), int(n))
        start = round(float(c)) - s // 2
        start = max(0, min(start, n - s))
        slices.append(slice(start, start + s))
    return tuple(slices)
