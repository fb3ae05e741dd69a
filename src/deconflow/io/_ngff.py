"""OME-NGFF (OME-Zarr) image metadata: read axes and voxel sizes, build a single-scale image.

This is the small part of the NGFF specification deconflow needs, validated
here rather than through ome-zarr-py, which pulls in a network stack (fsspec,
aiohttp, requests) and writes resolution pyramids deconflow has no use for.
Only plain JSON is handled here; :mod:`deconflow.io._zarr` does the zarr I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow.io.tiff import _unit_scale

__all__ = ["NGFF_VERSION", "ImageMeta", "image_attrs", "parse_image"]

#: The NGFF version written (zarr format 2; the version most viewers read today).
NGFF_VERSION = "0.4"
_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


@dataclass(frozen=True)
class ImageMeta:
    """What :func:`parse_image` finds: the level-0 array's path, axes and voxel size."""

    path: str
    axes: str | None
    voxel_size_um: VoxelSize | None


def _where(meta: dict[str, Any]) -> str:
    version = meta.get("version") or "unknown"
    return f"OME-Zarr (NGFF {version})"


def _axes(raw: object, name: str) -> tuple[str, list[object]]:
    """Return axis letters and units from NGFF ``axes`` (0.4+: dicts; 0.3: names)."""
    if not isinstance(raw, list):
        raise DeconflowError(
            f"{name} has no readable 'axes' list in its multiscales metadata; the store is "
            "damaged or not an OME-Zarr image. Re-export it (e.g. Fiji: File > Save As > OME-Zarr)."
        )
    names: list[str] = []
    units: list[object] = []
    for axis in raw:
        entry = axis if isinstance(axis, dict) else {"name": axis}
        names.append(str(entry.get("name", "")))
        units.append(entry.get("unit"))
    letters = "".join(n.upper() if n.lower() in "tczyx" and len(n) == 1 else "?" for n in names)
    if "?" in letters or len(set(letters)) != len(letters):
        raise DeconflowError(
            f"{name} has axes {names}; deconflow reads images with axes among t, c, z, y, x, "
            "each at most once. Convert the image to those axes (e.g. split other dimensions "
            "into separate images)."
        )
    return letters, units


def _scale(transforms: object, ndim: int) -> list[float] | None:
    """Return the ``scale`` of an NGFF ``coordinateTransformations`` list, if well formed."""
    if not isinstance(transforms, list):
        return None
    for transform in transforms:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            scale = transform.get("scale")
            if isinstance(scale, list) and len(scale) == ndim:
                try:
                    return [float(v) for v in scale]
                except (TypeError, ValueError):
                    return None
            return None
    return None


def _voxel_size(letters: str, units: list[object], scale: list[float] | None) -> VoxelSize | None:
    """Spatial voxel size in µm; ``None`` unless every spatial axis has a scale and a unit.

    NGFF has no default unit (unlike OME-XML's µm), and writers that omit it
    mostly mean pixels: a guessed micrometre would silently resample the PSF.
    """
    if scale is None:
        return None
    sizes: list[float] = []
    for axis in "ZYX":
        if axis not in letters:
            continue
        index = letters.index(axis)
        unit = units[index]
        size = scale[index] * _unit_scale(unit) if unit else math.nan
        if not (math.isfinite(size) and size > 0):
            return None
        sizes.append(size)
    return tuple(sizes) if len(sizes) in (2, 3) else None


def parse_image(attrs: dict[str, Any], name: str) -> ImageMeta | None:
    """Read the level-0 array path, axes and voxel size from an OME-Zarr group's attributes.

    Parameters
    ----------
    attrs : dict
        The group's attributes: NGFF 0.5 keeps them under ``"ome"``, earlier
        versions at the top level.
    name : str
        How to name the store in error messages.

    Returns
    -------
    ImageMeta or None
        ``None`` when the group has no OME metadata at all.

    Raises
    ------
    DeconflowError
        For a plate or well (HCS), a labels group or label image, several
        multiscales images, or unusable axes.
    """
    meta = attrs.get("ome", attrs)
    if not isinstance(meta, dict):
        return None
    if "plate" in meta or "well" in meta:
        kind, field = ("plate", "A/1/0") if "plate" in meta else ("well", "0")
        raise DeconflowError(
            f"{name} is an OME-Zarr {kind} (high-content screening), which holds many images; "
            f"deconflow reads one image: give the path of one field, e.g. {name}/{field}."
        )
    if "image-label" in meta:
        raise DeconflowError(
            f"{name} is a label image (a segmentation), not fluorescence intensities; give "
            "the path of the image it belongs to."
        )
    multiscales = meta.get("multiscales")
    if multiscales is None:
        if "labels" in meta:
            raise DeconflowError(
                f"{name} is the labels group of an OME-Zarr image (segmentations); give the "
                "image's own folder, its parent."
            )
        return None
    if not isinstance(multiscales, list) or not multiscales:
        raise DeconflowError(f"{name} has an empty or damaged 'multiscales' list; re-export it.")
    if len(multiscales) > 1:
        # like an OME-TIFF with several series: reading the first would silently drop the rest
        names = [m.get("name", i) if isinstance(m, dict) else i for i, m in enumerate(multiscales)]
        raise DeconflowError(
            f"{name} holds {len(multiscales)} multiscales images {names} and deconflow reads one "
            "image per store; save each image as its own OME-Zarr store."
        )
    image = multiscales[0]
    datasets = image.get("datasets") if isinstance(image, dict) else None
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict):
        raise DeconflowError(
            f"{name} lists no datasets (resolution levels) in its {_where(meta)} metadata; "
            "re-export it."
        )
    path = str(datasets[0].get("path", ""))
    if "axes" not in image:  # NGFF 0.1/0.2: always 5D t, c, z, y, x
        return ImageMeta(path, None, None)
    letters, units = _axes(image["axes"], name)
    level = _scale(datasets[0].get("coordinateTransformations"), len(letters))
    if level is not None and "coordinateTransformations" in image:
        # a scale for the whole multiscales applies on top of each level's own
        overall = _scale(image["coordinateTransformations"], len(letters))
        level = None if overall is None else [a * b for a, b in zip(level, overall, strict=True)]
    return ImageMeta(path, letters, _voxel_size(letters, units, level))


def image_attrs(
    axes: str, voxel_size_um: VoxelSize | None, name: str, path: str = "0"
) -> dict[str, Any]:
    """NGFF 0.4 ``multiscales`` attributes of a single-scale image.

    Spatial axes carry ``micrometer`` units only with a voxel size; without
    one their scale is 1 and they have no unit, which :func:`parse_image`
    reads back as "no voxel size".
    """
    spatial = [a for a in axes if a in "ZYX"]
    sizes = dict(zip(spatial, voxel_size_um, strict=True)) if voxel_size_um else {}
    entries: list[dict[str, Any]] = []
    for axis in axes:
        entry: dict[str, Any] = {"name": axis.lower(), "type": _AXIS_TYPES[axis]}
        if axis in sizes:
            entry["unit"] = "micrometer"
        entries.append(entry)
    scale = [float(sizes.get(axis, 1.0)) for axis in axes]
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": entries,
                "datasets": [
                    {"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ]
    }
