"""Pick the reader and writer by path: OME-Zarr stores (folders) or TIFF files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deconflow._types import VoxelSize
from deconflow.io._zarr import (
    is_store,
    read_ome_zarr,
    read_ome_zarr_description,
    write_ome_zarr,
)
from deconflow.io.ome import read_ome_description, write_ome_tiff
from deconflow.io.tiff import TiffImage, read_tiff

__all__ = ["is_zarr_path", "read_description", "read_image", "write_image"]


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a zarr store: ends in ``.zarr``, or is a folder with zarr metadata.

    A ``.zarr`` name counts even before the store exists, so that it can name
    an output too.
    """
    p = Path(path)
    if p.name.lower().endswith(".zarr"):
        return True
    return is_store(p)


def read_image(path: str | os.PathLike[str]) -> TiffImage:
    """Read an OME-Zarr store (:func:`read_ome_zarr`) or a TIFF file (:func:`read_tiff`).

    Raises
    ------
    DeconflowError
        As the chosen reader does; a plain folder is named as not a zarr store.
    """
    p = Path(path)
    if is_zarr_path(p) or p.is_dir():
        return read_ome_zarr(p)
    return read_tiff(p)


def read_description(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the provenance record of an OME-Zarr or OME-TIFF output, or ``None``."""
    if is_zarr_path(path):
        return read_ome_zarr_description(path)
    return read_ome_description(path)


def write_image(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    axes: str,
    voxel_size_um: VoxelSize | None = None,
    description: dict[str, Any] | None = None,
) -> Path:
    """Write OME-Zarr when ``path`` ends in ``.zarr``, OME-TIFF otherwise; atomically.

    See :func:`write_ome_zarr` (axes in T, C, Z, Y, X order) and
    :func:`write_ome_tiff` (T, C, Z in any order, then Y, X).
    """
    if is_zarr_path(path):
        return write_ome_zarr(
            path, data, axes=axes, voxel_size_um=voxel_size_um, description=description
        )
    return write_ome_tiff(
        path, data, axes=axes, voxel_size_um=voxel_size_um, description=description
    )
