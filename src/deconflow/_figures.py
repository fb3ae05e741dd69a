"""Raw-versus-deconvolved figures (xy and xz views) written with matplotlib's Agg canvas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from deconflow._types import VoxelSize
from deconflow.io._atomic import atomic_destination

__all__ = ["save_comparison_figure"]


def _limits(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [0.5, 99.8])
    return float(lo), float(max(hi, lo + 1e-12))


def save_comparison_figure(
    path: str | Path,
    panels: Sequence[tuple[str, np.ndarray]],
    voxel_size_um: VoxelSize | None,
    *,
    title: str = "",
) -> Path:
    """Save a figure with one column per volume: xy plane (top) and xz plane (bottom).

    The planes pass through the brightest voxel of the first volume (after a
    light smoothing), and the xz view is drawn at its true aspect ratio.

    Parameters
    ----------
    path : str or Path
        PNG destination.
    panels : sequence of (label, volume)
        3D volumes (Z, Y, X) of one shape.
    voxel_size_um : tuple of float or None
        (z, y, x) voxel size for the xz aspect ratio.
    title : str
        Figure title.
    """
    first = panels[0][1]
    smooth = ndimage.uniform_filter(first.astype(np.float32), size=3)
    z0, y0, _ = np.unravel_index(int(np.argmax(smooth)), first.shape)
    aspect = 1.0 if voxel_size_um is None else voxel_size_um[0] / voxel_size_um[2]
    n = len(panels)
    nz, ny, _ = first.shape
    height_ratio = max(nz * aspect / ny, 0.15)
    fig = Figure(figsize=(4.0 * n, 4.0 * (1 + height_ratio) + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, height_ratio], hspace=0.08, wspace=0.05)
    for col, (label, volume) in enumerate(panels):
        lo, hi = _limits(volume)
        ax_xy = fig.add_subplot(grid[0, col])
        ax_xy.imshow(volume[z0], cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        ax_xy.set_title(f"{label}\nxy, z = {z0}", fontsize=9)
        ax_xy.axhline(float(y0), color="cyan", lw=0.5, alpha=0.6)
        ax_xz = fig.add_subplot(grid[1, col])
        ax_xz.imshow(
            volume[:, y0, :],
            cmap="magma",
            vmin=lo,
            vmax=hi,
            aspect=aspect,
            interpolation="nearest",
        )
        ax_xz.set_title(f"xz, y = {y0}", fontsize=9)
        for ax in (ax_xy, ax_xz):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(path)
    with atomic_destination(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
