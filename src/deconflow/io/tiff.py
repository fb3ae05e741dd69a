"""TIFF reading and writing with voxel sizes; writes are atomic."""

from __future__ import annotations

import json
import logging
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import tifffile

from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow._validate import check_voxel_size
from deconflow.io._atomic import atomic_destination

__all__ = ["TiffImage", "read_tiff", "write_tiff"]

# OME's length units a microscope writes, and ImageJ's free-text names of them; plurals
# and the -re spellings are folded onto these by _unit_scale. Anything else reads as "no
# voxel size"
_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "micrometer": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
}


@dataclass(frozen=True)
class TiffImage:
    """An image read from a TIFF file or an OME-Zarr store.

    Attributes
    ----------
    data : numpy.ndarray
        Pixel data as stored (dtype unchanged), without length-1 axes other
        than those ``axes`` names.
    axes : str
        Axis letters of ``data`` (e.g. ``"ZYX"``, ``"CZYX"``).
    voxel_size_um : tuple of float or None
        Voxel size of the spatial axes (z, y, x) or (y, x) in micrometres,
        ``None`` when the file does not record it.
    declared_axes : str
        ``axes`` plus the length-1 T and C axes the file declares, in the
        file's order: an OME-TIFF declares both (e.g. ``"TCZYX"`` for a
        one-channel, one-time-point stack whose ``axes`` are ``"ZYX"``), an
        ImageJ hyperstack those its description names (``channels=1``,
        ``frames=1``; ImageJ itself writes them only above 1). Writing a result
        with these axes (``data`` reshaped to :attr:`declared_shape`) keeps the
        input's layout. Defaults to ``axes``.
    pixel_size_um : tuple of float or None
        In-plane pixel size (y, x) in micrometres; known also where
        ``voxel_size_um`` is ``None`` because the file records no z step (an
        OME-TIFF with ``PhysicalSizeY``/``X`` but no ``PhysicalSizeZ``): give
        the z step yourself, e.g. ``deconflow.deconvolve(image.data, psf,
        voxel_size=(dz_um, *image.pixel_size_um))``.
        Defaults to the last two entries of ``voxel_size_um``.
    """

    data: np.ndarray
    axes: str
    voxel_size_um: VoxelSize | None
    declared_axes: str = ""
    pixel_size_um: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.declared_axes:
            object.__setattr__(self, "declared_axes", self.axes)
        if self.pixel_size_um is None and self.voxel_size_um is not None:
            y, x = self.voxel_size_um[-2:]
            object.__setattr__(self, "pixel_size_um", (y, x))

    @property
    def declared_shape(self) -> tuple[int, ...]:
        """Shape of ``data`` with the declared length-1 axes put back, for ``declared_axes``."""
        sizes = dict(zip(self.axes, self.data.shape, strict=True))
        return tuple(sizes.get(a, 1) for a in self.declared_axes)


def _unit_scale(unit: object) -> float:
    text = str(unit or "um").strip().lower().replace("\\u00b5", "µ")
    if text in ("", "pixel", "pixels", "none"):
        return float("nan")
    text = text.replace("metre", "meter")  # micrometre(s), nanometre(s), ...
    if text not in _UNIT_TO_UM and text.endswith("s"):  # microns, nanometers, ...
        text = text[:-1]
    return _UNIT_TO_UM.get(text, float("nan"))


def _number(text: str) -> float:
    """Read a metadata number; a decimal comma (``"0,3"``, some locales) counts as a point."""
    try:
        return float(text.strip().replace(",", "."))
    except ValueError:  # an unreadable size is a missing one, not an unreadable file
        return float("nan")


def _ome_voxel_size(ome_xml: str) -> tuple[float | None, float | None, float | None]:
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:  # e.g. an unescaped "&": tifffile still reads the pixels
        return None, None, None
    for element in root.iter():
        if element.tag.endswith("Pixels"):
            sizes = []
            for axis in ("Z", "Y", "X"):
                value = element.get(f"PhysicalSize{axis}")
                unit = element.get(f"PhysicalSize{axis}Unit", "µm")
                sizes.append(None if value is None else _number(value) * _unit_scale(unit))
            return sizes[0], sizes[1], sizes[2]
    return None, None, None


def _resolution_um(
    page: tifffile.TiffPage, scales: tuple[float, float]
) -> tuple[float | None, float | None]:
    """Return the (y, x) pixel size from the resolution tags, in their units times ``scales``."""
    sizes: list[float | None] = []
    for tag, scale in zip(("YResolution", "XResolution"), scales, strict=True):
        value = page.tags.get(tag)
        if value is None:
            sizes.append(None)
            continue
        num, den = value.value
        sizes.append(None if num == 0 or den == 0 else (den / num) * scale)
    return sizes[0], sizes[1]


def _z_for_sequence(axes: str) -> str:
    """Name the planes of a generic image sequence (``I``, ``Q``) of a 3D stack ``Z``."""
    if "Z" in axes:
        return axes
    return axes.replace("I", "Z", 1) if "I" in axes else axes.replace("Q", "Z", 1)


#: ImageJ's description keys for its hyperstack axes of length 1 that deconflow keeps.
_IMAGEJ_KEYS = {"C": "channels", "T": "frames"}


def _declared_axes(series: tifffile.TiffPageSeries, axes: str, imagej: dict[str, Any]) -> str:
    """Return ``axes`` with the length-1 T and C axes the file declares put back in place.

    tifffile squeezes length-1 axes out of a series, so a one-channel OME-TIFF read
    as "ZYX" and its result was written without the C axis the input had. A length-1
    Z stays out: a single plane is deconvolved, and written, as a 2D image.
    """
    if series.kind == "ome":
        kept = set("TC")  # OME gives SizeT and SizeC for every image
    elif series.kind == "imagej":
        kept = {a for a, key in _IMAGEJ_KEYS.items() if key in imagej}
    else:  # plain and shaped TIFFs name no axes of their own
        return axes
    full = _z_for_sequence(series.get_axes(squeeze=False).upper())
    shape = series.get_shape(squeeze=False)
    declared = "".join(
        a for a, n in zip(full, shape, strict=True) if n > 1 or a in axes or a in kept
    )
    # only length-1 axes may differ, or the data would not fit the declared axes
    if "".join(a for a in declared if a in axes) != axes or len(set(declared)) != len(declared):
        return axes
    return declared


#: What tifffile logs when a page, tag value or ImageJ stack lies past the end of the file.
#: It then reads what it can (often the first plane alone, without the OME metadata), so
#: a truncated 3D stack came back as a 2D image, or without its voxel size, unnoticed
_TRUNCATION_MARKERS = (
    "invalid page offset",
    "invalid offset to page",
    "corrupted tag list",
    "invalid value offset",
    "series metadata invalid or corrupted file",
)


class _TruncationLog(logging.Handler):
    """Keep tifffile's error records that mean the file ends early, from one thread only."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        # another thread (a napari worker, a Dask thread) may be reading another file
        if record.thread == self.thread and any(m in message for m in _TRUNCATION_MARKERS):
            self.messages.append(message)


@contextmanager
def _truncation_log() -> Iterator[_TruncationLog]:
    handler = _TruncationLog()
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def read_tiff(path: str | os.PathLike[str]) -> TiffImage:
    """Read a TIFF, ImageJ hyperstack or OME-TIFF with its voxel size.

    Parameters
    ----------
    path : str or path-like
        File to read; it is opened read-only and never modified.

    Returns
    -------
    TiffImage
        Data, axis letters and voxel size (from OME ``PhysicalSize*`` or the
        ImageJ ``spacing``/``unit`` description plus resolution tags). A 3D
        OME-TIFF without ``PhysicalSizeZ`` has no voxel size but keeps its
        ``pixel_size_um``. Length-1 axes are left out of ``data`` and ``axes``;
        the T and C ones the file declares are kept in ``declared_axes``.

    Raises
    ------
    DeconflowError
        When the file is missing or not a readable TIFF, or is an OME-TIFF
        holding several images (series).
    """
    p = Path(path)
    if not p.is_file():
        raise DeconflowError(f"No such file: {p}. Check the path.")
    try:
        with _truncation_log() as truncated, tifffile.TiffFile(p) as tif:
            if tif.is_ome and len(tif.series) > 1:
                raise DeconflowError(
                    f"{p} holds {len(tif.series)} images (OME series, e.g. stage positions) "
                    "and deconflow reads one per file; save each as its own file (Fiji: "
                    "Bio-Formats Importer with 'Open all series', then save each)."
                )
            series = tif.series[0]
            data = series.asarray()
            if truncated.messages:
                raise DeconflowError(
                    f"Could not read {p} as TIFF: it ends before the data its header points "
                    f"to ({truncated.messages[0]}); is the file complete? Copy it again from "
                    "the microscope or its backup."
                )
            axes = _z_for_sequence(series.axes.upper() if series.axes else "")
            declared = _declared_axes(series, axes, tif.imagej_metadata or {})
            ome_xml = tif.ome_metadata if tif.is_ome else None
            is_ome = bool(ome_xml)
            if ome_xml:
                z, y, x = _ome_voxel_size(ome_xml)
            else:
                meta = tif.imagej_metadata or {}
                unit = meta.get("unit", "um")
                scale = _unit_scale(unit) if meta else 1.0
                # ImageJ writes "yunit"/"zunit" only where an axis's unit is not "unit"
                y_scale = _unit_scale(meta.get("yunit", unit)) if meta else 1.0
                # a file's first page is always a full page, never a frame sharing tags
                y, x = _resolution_um(cast(tifffile.TiffPage, tif.pages[0]), (y_scale, scale))
                # ImageJ leaves out a z step of 1 (its default) even in a calibrated stack
                spacing = meta.get("spacing", 1.0 if "unit" in meta else None)
                z_scale = _unit_scale(meta.get("zunit", unit))
                z = None if spacing is None else _number(str(spacing)) * z_scale
                if not meta:
                    # plain TIFF: resolution tags in inches or cm say nothing about the sample
                    y = x = None
                elif "unit" not in meta and "spacing" not in meta and y == x == scale:
                    # ImageJ's "uncalibrated": 1 pixel per unit and no unit (what tifffile
                    # writes without a resolution), not a 1 µm pixel
                    y = x = None
    except DeconflowError:
        raise
    except MemoryError as exc:
        raise DeconflowError(
            f"Not enough memory to read {p} ({exc}). Close other programs, or crop or split "
            "the stack (e.g. by channel or time point) before deconvolving it."
        ) from exc
    except Exception as exc:  # a damaged file can fail anywhere inside tifffile
        raise DeconflowError(f"Could not read {p} as TIFF ({exc}); is the file complete?") from exc
    spatial = sum(1 for a in axes if a in "ZYX")
    voxel = _sizes((z, y, x) if spatial >= 3 else (y, x))
    # OME records each axis's size apart: without PhysicalSizeZ the pixel size is still
    # known, and the z step is all a user has to add. ImageJ's resolution tags without
    # a calibrated z say little (its "uncalibrated" stacks carry them too)
    in_plane = _sizes((y, x)) if is_ome else None
    return TiffImage(
        data=data,
        axes=axes,
        voxel_size_um=voxel,
        declared_axes=declared,
        pixel_size_um=None if in_plane is None else (in_plane[0], in_plane[1]),
    )


def _sizes(values: tuple[float | None, ...]) -> VoxelSize | None:
    """Return ``values`` as sizes in µm, or ``None`` when one is missing or not positive."""
    if any(v is None or not np.isfinite(v) or v <= 0 for v in values):
        return None
    return tuple(float(v) for v in values)  # type: ignore[arg-type]


def _imagej_dtype(data: np.ndarray) -> np.ndarray:
    """Return ``data`` in a type ImageJ stores (uint8, uint16, int16, float32), converting it."""
    if data.dtype.char in "BHhf":
        return data
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype == np.int8:
        return data.astype(np.int16)
    return data.astype(np.float32)


def write_tiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    voxel_size_um: VoxelSize | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a 2D/3D array as an ImageJ TIFF, atomically.

    The file is written under a temporary name in the destination folder and
    renamed when complete, so a crash never leaves a half-written file under
    the final name.

    Parameters
    ----------
    path : str or path-like
        Destination.
    data : numpy.ndarray
        Array with axes (Z, Y, X) or (Y, X). ImageJ stores uint8, uint16, int16
        and float32; booleans are written as uint8, int8 as int16 and every
        other type (float64, int32, ...) as float32.
    voxel_size_um : tuple of float, optional
        Voxel size (z, y, x) or (y, x) in micrometres, stored so that Fiji and
        napari read the right scale.
    metadata : dict, optional
        Extra JSON-serialisable key/values stored in the ImageJ description
        ``Info`` field.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    DeconflowError
        When ``data`` is not 2D or 3D real numbers, or ``voxel_size_um`` does
        not fit it or is not positive.
    """
    dest = Path(path)
    data = np.asarray(data)
    if data.ndim not in (2, 3) or not (
        data.dtype == bool
        or np.issubdtype(data.dtype, np.integer)
        or np.issubdtype(data.dtype, np.floating)
    ):
        raise DeconflowError(
            f"write_tiff writes a 2D (Y, X) or 3D (Z, Y, X) array of real numbers, got shape "
            f"{data.shape} and dtype {data.dtype}; use write_ome_tiff for hyperstacks."
        )
    if voxel_size_um is not None and len(voxel_size_um) not in (data.ndim, 3):
        raise DeconflowError(
            f"voxel_size_um {tuple(voxel_size_um)} does not fit a {data.ndim}D array; give "
            "(z, y, x) or (y, x) in micrometres."
        )
    if voxel_size_um is not None:
        # a zero, negative or NaN size fails deep inside tifffile or is stored as an
        # unreadable calibration, and the file silently reads back without a voxel size
        check_voxel_size(voxel_size_um, len(voxel_size_um), "voxel_size_um")
    data = _imagej_dtype(data)
    ij_meta: dict[str, Any] = {"axes": "ZYX" if data.ndim == 3 else "YX"}
    resolution = None
    if voxel_size_um is not None:
        ij_meta["unit"] = "um"
        if data.ndim == 3:
            ij_meta["spacing"] = float(voxel_size_um[0])
        # tifffile takes (x, y) pixels per unit
        resolution = (1.0 / float(voxel_size_um[-1]), 1.0 / float(voxel_size_um[-2]))
    if metadata:
        ij_meta["Info"] = json.dumps(metadata, default=str)
    with atomic_destination(dest) as tmp:
        tifffile.imwrite(tmp, data, imagej=True, resolution=resolution, metadata=ij_meta)
    return dest
