"""Ground-truth volumes for the quality benchmark, unlike the prior's training generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage


def voronoi_membranes(
    shape: tuple[int, int, int], rng: np.random.Generator, cells: int = 12
) -> np.ndarray:
    """Cell walls of a 3D Voronoi tessellation (sheets 1–2 voxels thick), with cytosol haze."""
    seeds = rng.random((cells, 3)) * np.asarray(shape)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    # anisotropic voxels: z steps are ~2x the pixel size
    scale = np.array([2.0, 1.0, 1.0])
    d = np.linalg.norm((grid[..., None, :] - seeds) * scale, axis=-1)
    d.sort(axis=-1)
    walls = np.exp(-0.5 * ((d[..., 1] - d[..., 0]) / 0.8) ** 2)
    haze = 0.08 * ndimage.gaussian_filter(rng.random(shape), 3.0)
    return (walls + haze).astype(np.float32)


def beaded_rings(
    shape: tuple[int, int, int], rng: np.random.Generator, rings: int = 10
) -> np.ndarray:
    """Tilted rings of beads (like nuclear pores or synaptic active zones) of varied size."""
    vol = np.zeros(shape, np.float32)
    for _ in range(rings):
        centre = rng.random(3) * np.asarray(shape)
        radius = rng.uniform(3, 9)
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        a = np.cross(normal, [1.0, 0.0, 0.0])
        if np.linalg.norm(a) < 1e-3:
            a = np.cross(normal, [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(normal, a)
        beads = int(rng.integers(6, 14))
        for phi in np.linspace(0, 2 * np.pi, beads, endpoint=False):
            p = centre + radius * (np.cos(phi) * a + np.sin(phi) * b) * np.array([0.5, 1, 1])
            idx = tuple(np.clip(np.round(p).astype(int), 0, np.asarray(shape) - 1))
            vol[idx] += rng.uniform(0.5, 1.0)
    return ndimage.gaussian_filter(vol, 0.6) / max(ndimage.gaussian_filter(vol, 0.6).max(), 1e-9)


def real_derived(shape: tuple[int, int, int], repo: Path) -> np.ndarray:
    """Deconvolve the bundled real confocal line grid hard and crop it to ``shape``."""
    import deconflow
    from deconflow.io import read_tiff

    image = read_tiff(repo / "sample_data" / "confocal_grid.tif")
    bead = read_tiff(repo / "sample_data" / "confocal_bead.tif")
    sharp = deconflow.deconvolve(
        image.data,
        bead.data,
        voxel_size=image.voxel_size_um,
        psf_voxel_size=bead.voxel_size_um,
        iterations=40,
    )
    # 2x2 in-plane binning brings the 22 nm pixels closer to the benchmark's sampling
    binned = sharp[:, : sharp.shape[1] // 2 * 2, : sharp.shape[2] // 2 * 2]
    binned = binned.reshape(binned.shape[0], binned.shape[1] // 2, 2, binned.shape[2] // 2, 2)
    binned = binned.mean(axis=(2, 4))
    out = np.zeros(shape, np.float32)
    nz, ny, nx = (min(a, b) for a, b in zip(shape, binned.shape, strict=True))
    out[:nz, :ny, :nx] = binned[:nz, :ny, :nx]
    return out / out.max()


def ground_truths(
    shape: tuple[int, int, int], rng: np.random.Generator, repo: Path
) -> dict[str, np.ndarray]:
    """Return the benchmark's three ground truths by name, drawn from ``rng`` in a fixed order."""
    return {
        "voronoi membranes": voronoi_membranes(shape, rng),
        "beaded rings": beaded_rings(shape, rng),
        "real-derived grid": real_derived(shape, repo),
    }
