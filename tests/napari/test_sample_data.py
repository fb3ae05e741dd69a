"""Sample data contributions, opened through napari's plugin system."""

from __future__ import annotations

import numpy as np
import pytest

import deconflow
from deconflow._napari._sample_data import simulate

pytestmark = pytest.mark.gui


def test_real_sample_opens_with_voxel_sizes(make_napari_viewer, sample_image, sample_bead):
    viewer = make_napari_viewer()
    viewer.open_sample("deconflow", "confocal_grid")
    grid, bead = viewer.layers["confocal grid"], viewer.layers["confocal bead (PSF)"]
    np.testing.assert_array_equal(grid.data, sample_image.data)
    np.testing.assert_allclose(grid.scale, sample_image.voxel_size_um)
    np.testing.assert_allclose(bead.scale, sample_bead.voxel_size_um)


def test_simulated_sample_opens_with_truth_and_psf(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("deconflow", "simulated")
    names = [layer.name for layer in viewer.layers]
    assert names == ["simulated", "simulated ground truth", "simulated PSF"]
    assert viewer.layers["simulated"].data.shape == (24, 64, 64)
    assert not viewer.layers["simulated ground truth"].visible


def test_simulation_is_deterministic_and_deconvolution_brings_it_closer_to_truth():
    measured, truth, psf = simulate(seed=0)
    again, _, _ = simulate(seed=0)
    np.testing.assert_array_equal(measured, again)
    assert psf.sum() == pytest.approx(1.0, rel=1e-5)
    result = deconflow.deconvolve(measured, psf, voxel_size=(0.2, 0.08, 0.08), iterations=10)

    def corr(a):
        return np.corrcoef(a.ravel(), truth.ravel())[0, 1]

    assert corr(result) > corr(measured) + 0.1
