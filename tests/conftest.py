"""Shared fixtures: paths to bundled and shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from deconflow.io import TiffImage, read_tiff

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
# CI clones the repository next to a read-only copy of shared/ (as in the developers' checkout)
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


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
