"""Locate the bundled sample data (inside the wheel, or in a source checkout)."""

from __future__ import annotations

from pathlib import Path

from deconflow._errors import DeconflowError

__all__ = ["SAMPLE_BEAD", "SAMPLE_IMAGE", "sample_data_dir"]

SAMPLE_IMAGE = "confocal_grid.tif"
SAMPLE_BEAD = "confocal_bead.tif"


def sample_data_dir() -> Path:
    """Folder holding the bundled sample TIFFs.

    A wheel carries them as ``deconflow/sample_data``; an editable install or a
    source checkout finds the repository's top-level ``sample_data/``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "sample_data", here.parents[1] / "sample_data"):
        if (candidate / SAMPLE_IMAGE).is_file():
            return candidate
    raise DeconflowError(
        "The bundled sample data were not found; reinstall deconflow "
        "(pip install --force-reinstall deconflow)."
    )
