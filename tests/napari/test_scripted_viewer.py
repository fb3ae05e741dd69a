"""A scripted napari session: deconvolve next to a viewer, as docs/ shows users.

Runs under Xvfb (pytest-xvfb); QT_QPA_PLATFORM=offscreen does not work for napari here.
"""

import numpy as np
import pytest

import deconflow

pytestmark = pytest.mark.gui


def test_deconvolved_layer_lines_up_with_the_raw_layer(
    make_napari_viewer, sample_image, sample_bead
):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black
    scale = sample_image.voxel_size_um
    raw = viewer.add_image(sample_image.data, name="grid", scale=scale)
    result = deconflow.deconvolve(
        sample_image.data,
        sample_bead.data,
        voxel_size=scale,
        psf_voxel_size=sample_bead.voxel_size_um,
        iterations=5,
    )
    layer = viewer.add_image(
        result, name="grid deconvolved (rl)", scale=raw.scale, translate=raw.translate
    )
    assert layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.scale, raw.scale)
    np.testing.assert_allclose(layer.extent.world, raw.extent.world)
    # the canvas really draws it: a screenshot has the deconvolved lines in it
    viewer.layers["grid"].visible = False
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].max() > 0
