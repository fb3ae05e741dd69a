"""Array aliases and protocols shared across subpackages.

Tensor layout convention used everywhere inside deconflow: spatial axes are
``(Z, Y, X)`` for 3D and ``(Y, X)`` for 2D, optionally preceded by batch and
channel axes ``(B, C, ...)``. Operators act on the trailing spatial axes only.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["DEFAULT_AXES", "FloatArray", "LinearOperator", "Shape", "VoxelSize"]

FloatArray: TypeAlias = npt.NDArray[np.floating]
Shape: TypeAlias = tuple[int, ...]
#: Voxel size in micrometres, ordered like the spatial axes: (z, y, x) or (y, x).
VoxelSize: TypeAlias = tuple[float, ...]
#: Axis letters of an image whose source names none (a napari layer, a plain zarr array),
#: by its number of dimensions.
DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}


@runtime_checkable
class LinearOperator(Protocol):
    """A linear map between two tensor spaces, with its adjoint."""

    @property
    def domain_shape(self) -> Shape:
        """Spatial shape of the operator's input (the object)."""
        ...

    @property
    def range_shape(self) -> Shape:
        """Spatial shape of the operator's output (the measurement)."""
        ...

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator."""
        ...

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint operator."""
        ...
