"""OME-Zarr reading (NGFF 0.4 on zarr v2, 0.5 on zarr v3) and single-scale writing.

zarr is imported inside the functions: ``import deconflow.io`` stays as light
as it was for TIFF-only users (zarr brings asyncio machinery and codecs).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from deconflow._errors import DeconflowError
from deconflow._types import DEFAULT_AXES, VoxelSize
from deconflow._validate import check_voxel_size_of_axes
from deconflow.io._atomic import atomic_directory
from deconflow.io._ngff import image_attrs, parse_image
from deconflow.io.tiff import TiffImage

__all__ = [
    "ZARR_MARKERS",
    "is_store",
    "read_ome_zarr",
    "read_ome_zarr_description",
    "write_ome_zarr",
]

#: Files at the top of a zarr store: v2 group / array / attributes, v3 node.
ZARR_MARKERS = (".zgroup", ".zarray", ".zattrs", "zarr.json")
#: The group attribute that holds deconflow's provenance record.
PROVENANCE_KEY = "deconflow"
#: Uncompressed bytes a chunk may hold: whole planes where they fit, as viewers read planes.
_CHUNK_BYTES = 4 << 20


def is_store(path: Path) -> bool:
    """Whether ``path`` is a folder with zarr metadata at its top."""
    return path.is_dir() and any((path / marker).is_file() for marker in ZARR_MARKERS)


def _open(path: Path) -> Any:
    """Open a store read-only as a zarr group or array (format detected from its files)."""
    import zarr
    from zarr.storage import LocalStore

    if not path.exists():
        raise DeconflowError(f"No such OME-Zarr store: {path}. Check the path.")
    if not is_store(path):
        raise DeconflowError(
            f"{path} is not a zarr store (a folder with .zgroup/.zarray or zarr.json at its "
            "top); give an OME-Zarr image folder or a TIFF file."
        )
    try:
        return zarr.open(store=LocalStore(path, read_only=True), mode="r")
    except Exception as exc:  # damaged JSON, an unknown zarr format, ...
        raise DeconflowError(
            f"Could not open {path} as zarr ({exc}); is the store complete?"
        ) from exc


def read_ome_zarr(path: str | os.PathLike[str]) -> TiffImage:
    """Read the full-resolution image of an OME-Zarr store, or a plain zarr array.

    Parameters
    ----------
    path : str or path-like
        OME-Zarr image folder (NGFF 0.4 on zarr format 2, or 0.5 on format 3
        with the metadata under ``"ome"``), or a plain zarr array. It is opened
        read-only.

    Returns
    -------
    TiffImage
        Level 0 of the image's ``multiscales`` (lower resolutions are ignored),
        its axis letters (``t, c, z, y, x`` names as ``"TCZYX"``) and its
        voxel size in µm: the level's ``scale`` times the image's own, in the
        axes' units. Without a unit on every spatial axis the voxel size is
        ``None`` (NGFF has no default unit). A plain array gets the axes
        ``YX``, ``ZYX``, ``CZYX`` or ``TCZYX`` by its dimensions and no voxel size.

    Raises
    ------
    DeconflowError
        When the path is missing or not a zarr store; the store is a plate or
        well (HCS), a labels group or a label image, holds several multiscales
        images (none is picked, as for an OME-TIFF with several series), has
        axes other than t, c, z, y, x, or its data cannot be read.
    """
    import zarr

    p = Path(path)
    node = _open(p)
    meta = None
    if isinstance(node, zarr.Group):
        meta = parse_image(node.attrs.asdict(), str(p))
        if meta is None:
            members = sorted(node.keys())[:5]
            raise DeconflowError(
                f"{p} is a zarr group without OME-Zarr image metadata ('multiscales'); give "
                f"the path of an image or array inside it (it holds {members})."
            )
        try:
            node = node[meta.path]
        except Exception as exc:
            raise DeconflowError(
                f"{p} names its full-resolution data {meta.path!r}, which cannot be opened "
                f"({exc}); the store is incomplete."
            ) from exc
        if not isinstance(node, zarr.Array):
            raise DeconflowError(f"{p}/{meta.path} is not an array; the store is damaged.")
    try:
        data = np.asarray(node[...])
    except MemoryError as exc:
        raise DeconflowError(
            f"Not enough memory to read {p} ({exc}). Close other programs, or crop or split "
            "the stack (e.g. by channel or time point) before deconvolving it."
        ) from exc
    except Exception as exc:  # a damaged chunk or a codec this installation lacks
        raise DeconflowError(f"Could not read the data of {p} ({exc}); is it complete?") from exc
    axes = meta.axes if meta is not None and meta.axes is not None else None
    if axes is None:
        if data.ndim not in DEFAULT_AXES:
            raise DeconflowError(
                f"{p} is a {data.ndim}D array without axis names; deconflow takes 2D to 5D "
                "(t, c, z, y, x) images. Add OME-Zarr axes metadata or reshape it."
            )
        axes = DEFAULT_AXES[data.ndim]
    if len(axes) != data.ndim:
        raise DeconflowError(
            f"{p} names {len(axes)} axes ({axes}) for {data.ndim}D data; the metadata is damaged."
        )
    voxel = meta.voxel_size_um if meta is not None else None
    return TiffImage(data=data, axes=axes, voxel_size_um=voxel)


def read_ome_zarr_description(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the record :func:`write_ome_zarr` stored, or ``None``.

    Only the group attributes are read, not the chunks. A missing, unreadable
    or foreign store gives ``None``, as :func:`~deconflow.io.read_ome_description`
    does for TIFFs.
    """
    store = Path(path)
    try:
        if (store / ".zattrs").is_file():
            attrs = json.loads((store / ".zattrs").read_text(encoding="utf-8"))
        else:  # zarr format 3 keeps a node's attributes in its zarr.json
            attrs = json.loads((store / "zarr.json").read_text(encoding="utf-8"))["attributes"]
        record = attrs.get(PROVENANCE_KEY)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def _chunks(shape: tuple[int, ...], axes: str, itemsize: int) -> tuple[int, ...]:
    """One plane per chunk (split in y and x only when a plane passes ``_CHUNK_BYTES``)."""
    y, x = shape[-2], shape[-1]
    while y * x * itemsize > _CHUNK_BYTES and (y > 1 or x > 1):
        if y >= x:
            y = math.ceil(y / 2)
        else:
            x = math.ceil(x / 2)
    planes = max(1, _CHUNK_BYTES // (y * x * itemsize))
    chunks = [1] * (len(shape) - 2) + [y, x]
    if "Z" in axes:
        z = axes.index("Z")
        chunks[z] = min(shape[z], planes)
    return tuple(chunks)


def _json_safe(value: Any) -> Any:
    """Turn a record into strict JSON (NaN and infinities become null; Java readers refuse them)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return _json_safe(json.loads(json.dumps(value, default=str)))


def write_ome_zarr(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    axes: str,
    voxel_size_um: VoxelSize | None = None,
    description: dict[str, Any] | None = None,
) -> Path:
    """Write an array as a single-scale OME-Zarr image (NGFF 0.4, zarr format 2), atomically.

    The store is written into a hidden temporary folder beside ``path`` and
    renamed into place when complete; an existing store at ``path`` is
    replaced only then (see :func:`~deconflow.io._atomic.atomic_directory`).

    Parameters
    ----------
    path : str or path-like
        Destination folder (conventionally ending in ``.ome.zarr``).
    data : numpy.ndarray
        Array whose dimensions ``axes`` names.
    axes : str
        Axis letters in NGFF order: some of ``T``, ``C``, ``Z`` in that order,
        then ``YX`` (``"ZYX"``, ``"CZYX"``, ``"TCZYX"``, ...).
    voxel_size_um : tuple of float, optional
        Spatial voxel size (z, y, x) or (y, x) in micrometres, stored as the
        level's ``scale`` with ``micrometer`` units.
    description : dict, optional
        JSON-serialisable record stored in the group attributes under
        ``"deconflow"`` (read it back with :func:`read_ome_zarr_description`).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    DeconflowError
        When ``axes`` does not fit ``data`` or NGFF's order, or ``voxel_size_um``
        does not fit ``axes`` or is not positive.
    """
    import numcodecs
    import zarr
    from zarr.storage import LocalStore

    data = np.asarray(data)
    axes = axes.upper()
    ordered = "".join(a for a in "TCZYX" if a in axes)
    if len(axes) != data.ndim or axes != ordered or len(set(axes)) != len(axes) or "YX" not in axes:
        raise DeconflowError(
            f"Cannot write axes {axes!r} for a {data.ndim}D array as OME-Zarr; NGFF takes one "
            "letter per dimension in the order T, C, Z, Y, X (each optional but Y and X), "
            "e.g. 'CZYX'. Transpose the array (numpy.moveaxis) to that order."
        )
    if voxel_size_um is not None:
        check_voxel_size_of_axes(voxel_size_um, axes, "voxel_size_um")
    dest = Path(path)
    if dest.is_dir() and not is_store(dest):
        # replacing it would delete a folder of other files, not an earlier output
        raise DeconflowError(
            f"{dest} is a folder but not a zarr store; deconflow replaces only earlier stores. "
            "Choose another output path."
        )
    attrs = image_attrs(axes, voxel_size_um, name=dest.name.split(".")[0])
    if description is not None:
        attrs[PROVENANCE_KEY] = _json_safe(description)
    with atomic_directory(dest) as tmp:
        root = zarr.open_group(store=LocalStore(tmp), mode="w", zarr_format=2)
        array = root.create_array(
            "0",
            shape=data.shape,
            dtype=data.dtype,
            chunks=_chunks(data.shape, axes, data.dtype.itemsize),
            # what ome-zarr-py writes: every zarr v2 reader (Java ones too) has blosc
            compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
            # NGFF 0.4 requires "/" between chunk indices
            chunk_key_encoding={"name": "v2", "separator": "/"},
            fill_value=0,
        )
        array[...] = data
        root.attrs.update(attrs)
    return dest
