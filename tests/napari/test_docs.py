"""docs/napari.md's code blocks run as written, in a real viewer; the screenshot is real."""

from __future__ import annotations

import os
import re
from pathlib import Path

import napari
import numpy as np
import pytest

pytestmark = pytest.mark.gui

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _blocks() -> list[str]:
    text = (DOCS / "napari.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_scripted_session_and_widget_driving_from_the_docs(make_napari_viewer, monkeypatch, qtbot):
    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda: viewer)
    namespace: dict = {}
    # napari.run() would block; the test's event loop waits for the worker instead
    monkeypatch.setattr(
        napari,
        "run",
        lambda: qtbot.waitUntil(lambda: namespace["widget"].worker is None, timeout=60_000),
    )
    first, second = _blocks()
    exec(first, namespace)
    grid = viewer.layers["confocal grid"]
    scripted = viewer.layers["confocal grid (rl)"]
    assert scripted.data.dtype == np.float32
    np.testing.assert_allclose(scripted.scale, grid.scale)
    exec(second, namespace)
    layer = viewer.layers["confocal grid deconvolved (rl-tv)"]
    settings = layer.metadata["deconflow"]["settings"]
    assert settings["rl_tv"] == {**settings["rl_tv"], "iterations": 5, "tv_weight": 0.005}
    assert settings["voxel_size_um"] == pytest.approx(list(grid.scale))
    np.testing.assert_allclose(layer.translate, grid.translate)


def test_screenshot_of_the_docked_widget_with_a_result(make_napari_viewer, qtbot, tmp_path):
    """Render the widget and a result; DECONFLOW_WRITE_DOCS=1 saves it as the docs image."""
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black
    grid, bead = viewer.open_sample("deconflow", "confocal_grid")
    _, widget = viewer.window.add_plugin_dock_widget("deconflow", "Deconvolution")
    widget.image.value, widget.psf_layer.value = grid, bead
    widget.method.value = "rl"
    widget.method_options["rl"]["iterations"].value = 10
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    # raw and result side by side (napari's grid mode), on plane 10 of 21
    bead.visible = False
    viewer.grid.enabled = True
    viewer.window.resize(1500, 850)  # room for the canvas beside the dock
    viewer.dims.set_point(0, grid.translate[0] + 10 * grid.scale[0])
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    # both halves of the canvas draw an image with bright lines on black
    half = canvas.shape[1] // 2
    assert canvas[:, :half].max() > 100 and canvas[:, half:].max() > 100
    target = (
        DOCS / "images" / "napari_widget.png"
        if os.environ.get("DECONFLOW_WRITE_DOCS") == "1"
        else tmp_path / "napari_widget.png"
    )
    from skimage.io import imsave

    imsave(target, shot, check_contrast=False)
    assert target.stat().st_size > 10_000
