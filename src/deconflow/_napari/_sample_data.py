"""Sample data for napari's File > Open Sample menu.

Each function returns napari ``LayerData`` tuples, placed in micrometres
(``scale`` from the voxel sizes), so the widget's voxel sizes fill themselves in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deconflow._sample_data import SAMPLE_BEAD, SAMPLE_IMAGE, sample_data_dir
from deconflow.io import read_tiff
from deconflow.physics import ConvolutionOperator
from deconflow.psf import widefield_psf

__all__ = ["real_sample", "simulated_sample"]

LayerData = tuple[np.ndarray, dict[str, Any], str]

#: Simulated stack: shape (z, y, x) and voxel size in µm, a widefield 1.2 NA oil objective.
_SIM_SHAPE = (24, 64, 64)
_SIM_VOXEL_UM = (0.2, 0.08, 0.08)
_SIM_PEAK_PHOTONS = 200.0
_SIM_BACKGROUND = 10.0


def real_sample() -> list[LayerData]:
    """Return a real confocal stack of a line grid and a bead from the same microscope.

    Data: BioImage Analysis Notebooks, CC-BY 4.0 (see ``sample_data/README.md``).
    """
    folder = sample_data_dir()
    image = read_tiff(folder / SAMPLE_IMAGE)
    bead = read_tiff(folder / SAMPLE_BEAD)
    return [
        (
            image.data,
            # uint8 data at 1-8 counts would look black under napari's dtype-wide default range
            {
                "name": "confocal grid",
                "scale": image.voxel_size_um,
                "contrast_limits": (0.0, float(image.data.max())),
            },
            "image",
        ),
        (
            bead.data,
            {"name": "confocal bead (PSF)", "scale": bead.voxel_size_um, "visible": False},
            "image",
        ),
    ]


def simulate(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate a blurred, noisy stack; return it, its ground truth and the PSF.

    Beads and short filaments are blurred by a theoretical widefield PSF
    through the same forward model deconflow inverts, with a constant
    background and Poisson noise; ``seed`` makes it reproducible.

    Returns
    -------
    measured, truth, psf : numpy.ndarray
        float32 arrays; ``measured`` and ``truth`` have shape ``(24, 64, 64)``.
    """
    rng = np.random.default_rng(seed)
    psf = widefield_psf(
        (17, 33, 33), _SIM_VOXEL_UM, na=1.2, wavelength_nm=520, refractive_index=1.515
    )
    operator = ConvolutionOperator(psf, _SIM_SHAPE, boundary="valid")
    # the object extends past the stack (as in a real sample): out-of-view light enters it
    shape = operator.object_shape
    obj = np.zeros(shape, dtype=np.float32)
    for _ in range(60):  # beads
        z, y, x = (rng.integers(0, n) for n in shape)
        obj[z, y, x] += rng.uniform(0.5, 1.0)
    upper = np.array(shape) - 1
    for _ in range(8):  # straight filaments through the field of view
        start = rng.uniform(operator.margin, np.add(operator.margin, _SIM_SHAPE))
        direction = rng.normal(size=3) * np.array([0.3, 1.0, 1.0])
        direction /= np.linalg.norm(direction)
        for t in np.arange(-40.0, 40.0, 0.5):
            point = np.round(start + t * direction).astype(int)
            if np.all(point >= 0) and np.all(point <= upper):
                obj[tuple(point)] = 0.3
    blurred = operator.A(torch.from_numpy(obj)).numpy()
    scale = np.float32(_SIM_PEAK_PHOTONS / float(blurred.max()))
    expected = np.clip(blurred * scale, 0.0, None) + _SIM_BACKGROUND
    measured = rng.poisson(expected).astype(np.float32)
    truth = operator.crop_to_image(torch.from_numpy(obj * scale)).numpy()
    return measured, truth.astype(np.float32), psf.astype(np.float32)


def simulated_sample() -> list[LayerData]:
    """Return the simulated widefield stack, its ground truth (hidden) and its PSF."""
    measured, truth, psf = simulate()
    scale = _SIM_VOXEL_UM
    return [
        (measured, {"name": "simulated", "scale": scale}, "image"),
        (truth, {"name": "simulated ground truth", "scale": scale, "visible": False}, "image"),
        (psf, {"name": "simulated PSF", "scale": scale, "visible": False}, "image"),
    ]
