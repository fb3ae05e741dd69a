"""Overlapping tiles sized from a memory budget, and their smooth blending.

A stack too large for the device's memory is cut into tiles that overlap by
``2 * overlap`` voxels along every split axis. Each tile is deconvolved on its
own (with the edge-aware model, so a tile's faces are treated like a stack's
faces) and the tiles are blended with weights that ramp linearly across the
overlap, so seams do not show.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deconflow._types import Shape
from deconflow.physics._fftsize import smooth_shape

__all__ = [
    "TilePlan",
    "blend_weight",
    "estimate_bytes",
    "memory_budget_bytes",
    "plan_tiles",
]

#: float32 copies of the FFT grid each method keeps alive at once (measured, rounded up).
#: The flow's peak is the network's activations (16-48 channels at full and half
#: resolution on the measured window): 146-149 copies measured on 32×128×128 and
#: 48×192×192 stacks with a 21×31×31 PSF, up to ~170 on small stacks, where the noise
#: calibration's and the bootstrap's buffers weigh more.
_GRID_COPIES = {"rl": 12, "rl-tv": 18, "wiener": 12, "flow": 200}
#: Share of the available memory a run may plan for (the rest is headroom).
_CPU_SHARE = 0.5
_CUDA_SHARE = 0.8


def estimate_bytes(tile_shape: Shape, psf_shape: Shape, method: str) -> int:
    """Estimate the peak memory (bytes) of deconvolving one block of ``tile_shape``.

    The solvers work on the padded FFT grid (block plus the PSF's support,
    rounded to 7-smooth lengths); each method keeps a known number of float32
    copies of it alive.
    """
    grid = smooth_shape(n + 2 * (k // 2) for n, k in zip(tile_shape, psf_shape, strict=True))
    return int(_GRID_COPIES.get(method, 16) * 4 * math.prod(grid))


def memory_budget_bytes(device: torch.device) -> int:
    """Memory a run may plan to use on ``device``.

    80 % of the free memory of a CUDA device; 50 % of the available system
    memory (``MemAvailable``) on the CPU. On CUDA, memory torch's allocator holds
    cached but unused (an earlier run's buffers) counts as free: the driver does
    not see it so, but this run's tensors reuse it.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(_CUDA_SHARE * (free + max(cached, 0)))
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        available = None
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(_CPU_SHARE * available)


@dataclass(frozen=True)
class TilePlan:
    """How a stack is cut: tile index slices (into the image) and the overlap per side."""

    tiles: tuple[tuple[slice, ...], ...]
    overlap: Shape
    tile_shape: Shape

    @property
    def count(self) -> int:
        """Number of tiles."""
        return len(self.tiles)


def _axis_tiles(n: int, max_len: int, overlap: int) -> list[slice]:
    if max_len >= n:
        return [slice(0, n)]
    step = max(max_len - 2 * overlap, 1)
    count = math.ceil((n - 2 * overlap) / step)
    length = min(n, math.ceil((n + (count - 1) * 2 * overlap) / count))
    starts = [min(i * (length - 2 * overlap), n - length) for i in range(count)]
    return [slice(s, s + length) for s in starts]


def plan_tiles(
    image_shape: Shape,
    psf_shape: Shape,
    method: str,
    budget_bytes: int,
    *,
    max_tile_shape: Shape | None = None,
    min_overlap: int = 8,
) -> TilePlan:
    """Cut ``image_shape`` into as few overlapping tiles as fit ``budget_bytes``.

    Parameters
    ----------
    image_shape, psf_shape : tuple of int
        Spatial shapes of the stack and the (prepared) PSF.
    method : str
        Deconvolution method (sets the memory per voxel).
    budget_bytes : int
        Memory one tile may use.
    max_tile_shape : tuple of int, optional
        Largest tile the user allows (overrides the budget when smaller).
    min_overlap : int
        Smallest overlap per side; the overlap is at least the PSF's half-support.

    Returns
    -------
    TilePlan
        One tile covering everything when the stack fits.
    """
    overlap = tuple(max(k // 2, min_overlap) for k in psf_shape)
    limit = list(
        image_shape
        if max_tile_shape is None
        else (min(m, n) for m, n in zip(max_tile_shape, image_shape, strict=True))
    )
    # a tile must be longer than its two overlaps to move forward: at least 4 overlaps
    limit = [max(lim, min(n, 4 * o)) for lim, n, o in zip(limit, image_shape, overlap, strict=True)]
    # halve the longest axis (in voxels beyond its overlap) until a tile fits the budget;
    # an axis already at 4 overlaps cannot shrink, but the others still may
    while estimate_bytes(tuple(limit), psf_shape, method) > budget_bytes:
        spare = [
            lim - 2 * o if lim - 2 * o > 2 * o else -1
            for lim, o in zip(limit, overlap, strict=True)
        ]
        axis = int(np.argmax(spare))
        if spare[axis] < 0:
            break  # tiles as small as useful; let the run try (and report OOM if it happens)
        limit[axis] = max(limit[axis] // 2 + overlap[axis], 4 * overlap[axis])
    per_axis = [
        _axis_tiles(n, lim, o) for n, lim, o in zip(image_shape, limit, overlap, strict=True)
    ]
    tiles = tuple(itertools.product(*per_axis))
    return TilePlan(tiles=tiles, overlap=overlap, tile_shape=tuple(limit))


def blend_weight(tile: Sequence[slice], image_shape: Shape, overlap: Shape) -> np.ndarray:
    """Blending weight of one tile: 1 inside, linear ramps over ``2 * overlap`` at inner seams.

    Faces on the stack's own boundary keep weight 1, so a single tile has
    weight 1 everywhere. Weights are strictly positive, so the normalised sum
    over tiles is defined everywhere.
    """
    profiles = []
    for s, n, o in zip(tile, image_shape, overlap, strict=True):
        length = s.stop - s.start
        position = np.arange(length, dtype=np.float32)
        ramp = 2 * o
        up = np.clip((position + 0.5) / ramp, 0.0, 1.0) if s.start > 0 else np.ones(length)
        down = (
            np.clip((length - position - 0.5) / ramp, 0.0, 1.0) if s.stop < n else np.ones(length)
        )
        profiles.append(np.minimum(up, down).astype(np.float32))
    weight = profiles[0]
    for p in profiles[1:]:
        weight = np.multiply.outer(weight, p)
    return weight
