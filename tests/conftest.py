"""Shared fixtures: paths to bundled and shared real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from deconflow.io import TiffImage, read_tiff

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
# CI clones the repository next to a read-only copy of shared/ (as in the developers' checkout)
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


def random_beads(
    shape: tuple[int, ...],
    count: int,
    width: float | tuple[float, ...],
    rng: np.random.Generator,
    margin: int = 0,
) -> np.ndarray:
    """``count`` unit points at random voxels (``margin`` from each face), Gaussian-blurred."""
    points = np.zeros(shape)
    points[tuple(rng.integers(margin, n - margin, count) for n in shape)] = 1.0
    return ndimage.gaussian_filter(points, width)


def gaussian_psf(shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """A centred Gaussian PSF (peak at ``shape // 2``), normalised to sum 1."""
    grids = np.meshgrid(*(np.arange(n) - n // 2 for n in shape), indexing="ij")
    g = np.exp(-0.5 * sum((x / s) ** 2 for x, s in zip(grids, sigma, strict=True)))
    return g / g.sum()


@pytest.fixture(scope="session")
def shared_real() -> Path:
    """Folder of real microscopy files shared beside the repository."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_REAL}")
    return SHARED_REAL


@pytest.fixture(scope="session")
def sample_image() -> TiffImage:
    return read_tiff(SAMPLE_DATA / "confocal_grid.tif")


@pytest.fixture(scope="session")
def sample_bead() -> TiffImage:
    return read_tiff(SAMPLE_DATA / "confocal_bead.tif")
