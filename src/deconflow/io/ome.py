"""OME-TIFF writing with axes, voxel sizes and a JSON description; writes are atomic."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow._validate import check_voxel_size_of_axes
from deconflow.io._atomic import atomic_destination

__all__ = ["read_ome_description", "write_ome_tiff"]

#: OME-TIFF stores these axes; YX must come last (tifffile maps the rest to DimensionOrder).
_OME_AXES = set("TCZYX")


def write_ome_tiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    axes: str,
    voxel_size_um: VoxelSize | None = None,
    description: dict[str, Any] | None = None,
) -> Path:
    """Write an array as OME-TIFF with its axes and voxel size, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination (conventionally ending in ``.ome.tif``).
    data : numpy.ndarray
        Array whose dimensions ``axes`` names.
    axes : str
        Axis letters, some of ``T``, ``C``, ``Z`` in any order followed by
        ``YX`` (e.g. ``"ZCYX"`` for an ImageJ-ordered hyperstack); the file
        keeps this order (OME ``DimensionOrder``).
    voxel_size_um : tuple of float, optional
        Spatial voxel size (z, y, x) or (y, x) in micrometres, stored as OME
        ``PhysicalSize*`` in µm.
    description : dict, optional
        JSON-serialisable record stored as the OME ``Image/Description``
        (read it back with :func:`read_ome_description`).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    DeconflowError
        When ``axes`` does not fit ``data`` or OME-TIFF, or ``voxel_size_um``
        does not fit ``axes`` or is not positive.
    """
    axes = axes.upper()
    if (
        len(axes) != data.ndim
        or set(axes) - _OME_AXES
        or len(set(axes)) != len(axes)
        or not axes.endswith("YX")
    ):
        raise DeconflowError(
            f"Cannot write axes {axes!r} for a {data.ndim}D array as OME-TIFF; give one letter "
            "per dimension from T, C, Z (each at most once), ending in YX."
        )
    metadata: dict[str, Any] = {"axes": axes}
    if voxel_size_um is not None:
        spatial = check_voxel_size_of_axes(voxel_size_um, axes, "voxel_size_um")
        for axis, size in zip(spatial, voxel_size_um, strict=True):
            metadata[f"PhysicalSize{axis}"] = float(size)
            metadata[f"PhysicalSize{axis}Unit"] = "µm"
    if description is not None:
        metadata["Description"] = json.dumps(description, default=str, sort_keys=True)
    dest = Path(path)
    with atomic_destination(dest) as tmp:
        tifffile.imwrite(tmp, data, ome=True, photometric="minisblack", metadata=metadata)
    return dest


def read_ome_description(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the JSON record :func:`write_ome_tiff` stored in an OME-TIFF, or ``None``.

    Only the OME-XML header is read, not the pixels, so checking many outputs
    is cheap. A missing, unreadable or foreign file gives ``None``: callers use
    this to decide whether an output is theirs and complete.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
        if not xml:
            return None
        for element in ET.fromstring(xml).iter():
            if element.tag.endswith("}Description") or element.tag == "Description":
                record = json.loads(element.text or "")
                return record if isinstance(record, dict) else None
    except (OSError, ValueError, ET.ParseError, tifffile.TiffFileError):
        return None
    return None
