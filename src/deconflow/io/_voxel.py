"""A z step alone completed with a file's own pixel size.

Shared by the commands that read files (``deconflow run``/``batch`` and ``deconflow
train``): a user who knows the z step but not each file's pixel size gives the z step
alone, and every file read supplies its own y and x. It lives in :mod:`deconflow.io`,
beside the reader whose :class:`~deconflow.io.tiff.TiffImage` it completes, so that the
training data reader in :mod:`deconflow.priors` can use it without importing the batch
layer above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow.io.tiff import TiffImage

__all__ = ["complete_z_step"]


def complete_z_step(
    voxel_size_um: Sequence[float] | None,
    image: TiffImage,
    path: str | Path,
    *,
    given_as: str,
    full_as: str,
) -> VoxelSize | None:
    """Return ``voxel_size_um``, a z step alone ``(z,)`` completed to ``(z, y, x)``.

    A z step alone takes the file's pixel size (y, x); any other value (three sizes,
    or two for a 2D image) overrides the file's metadata and is returned as it is.

    Parameters
    ----------
    voxel_size_um : sequence of float or None
        The voxel size the user gave, in µm.
    image : TiffImage
        The file read, for its axes and pixel size.
    path : str or path-like
        The file, named in messages as given (a batch names the file alone, training
        the path in its folder).
    given_as : str
        How the user gave the z step, as they would recognise it (e.g.
        ``"--voxel-size 0.3"``).
    full_as : str
        The same with all three sizes, the fix offered (e.g. ``"--voxel-size 0.3 Y X"``).

    Returns
    -------
    tuple of float or None
        The voxel size to use for this file.

    Raises
    ------
    DeconflowError
        If the file is 2D (it has no z step) or records no pixel size to complete
        the z step with; the message names the file and the fix.
    """
    if voxel_size_um is None or len(voxel_size_um) != 1:
        return None if voxel_size_um is None else tuple(float(v) for v in voxel_size_um)
    z = float(voxel_size_um[0])
    name = str(path)
    if sum(1 for a in image.axes if a in "ZYX") < 3:
        raise DeconflowError(
            f"{given_as} is a z step alone, but {name} is a 2D image (axes {image.axes!r}) "
            "with no z axis; give its pixel size as two sizes (y x) instead, or none to read "
            "it from the file."
        )
    if image.pixel_size_um is None:
        raise DeconflowError(
            f"{given_as} is a z step alone, but {name} records no pixel size to take y and "
            f"x from; give all three sizes in µm: {full_as}."
        )
    return (z, *image.pixel_size_um)
