"""The deconvolution dock widget, driven as a user would, in a real napari viewer (Xvfb)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from magicgui.widgets import FileEdit, FloatSpinBox, LineEdit, SpinBox

import deconflow
from deconflow._napari import _fields, _jobs, _widget
from deconflow._napari._fields import MethodOptions, method_section
from deconflow.config import METHODS, DeconvolutionSettings
from deconflow.io import write_tiff

pytestmark = pytest.mark.gui

SCALE = (0.2, 0.08, 0.08)
TRANSLATE = (1.0, 2.0, 3.0)


def _fast(widget, method: str, steps: int = 2) -> None:
    """Choose ``method`` with few steps (iterations for the classical ones, steps for flow)."""
    widget.method.value = method
    options = widget.method_options[method]
    name = next(n for n in ("iterations", "steps") if n in options.widgets)
    options[name].value = steps
    if "samples" in options.widgets:
        options["samples"].value = 2


def _load(viewer, simulated):
    measured, _, psf = simulated
    image = viewer.add_image(measured, name="cells", scale=SCALE, translate=TRANSLATE)
    viewer.add_image(psf, name="bead psf", scale=SCALE)
    return image


def test_widget_comes_from_the_manifest_with_methods_and_options_from_settings(
    viewer_widget, simulated
):
    viewer, widget = viewer_widget
    assert isinstance(widget, _widget.DeconvolutionWidget)
    assert list(widget.method.choices) == list(METHODS)
    assert widget.method.value == DeconvolutionSettings().method
    for method in METHODS:
        fields = {f.name for f in dataclasses.fields(method_section(method)) if f.init}
        assert set(widget.method_options[method].widgets) == fields
    _load(viewer, simulated)
    # the image layer is picked, its scale fills the voxel size; the PSF picker prefers "psf"
    assert widget.image.value.name == "cells"
    assert widget.psf_layer.value.name == "bead psf"
    assert widget.voxel.get(3) == pytest.approx(SCALE)
    assert widget.axes.value == "ZYX"
    # only the chosen method's options are shown
    widget.method.value = "wiener"
    assert not widget.method_options["wiener"].main.native.isHidden()
    assert widget.method_options["rl"].main.native.isHidden()
    assert widget.method_options["wiener"].advanced.native.isHidden()  # advanced section closed
    widget.show_advanced.value = True
    assert not widget.method_options["wiener"].advanced.native.isHidden()
    assert widget.method_options["rl-tv"].advanced.native.isHidden()


def test_the_settings_default_is_the_widget_default_and_flow_fields_become_widgets(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Flow:  # what a flow-matching section could look like
        steps: int = 16
        samples: int = 1
        prior_strength: float = 0.5
        weights_path: str | None = None
        clamp: bool = True

    monkeypatch.setattr(_widget, "METHODS", {"rl": "rl", "flow": "flow"})
    assert _widget.default_method() == DeconvolutionSettings().method
    monkeypatch.setattr(_fields, "method_section", lambda method: Flow)
    options = MethodOptions("flow")
    assert isinstance(options["steps"], SpinBox)
    assert isinstance(options["samples"], SpinBox)
    assert isinstance(options["prior_strength"], FloatSpinBox)
    assert isinstance(options["weights_path"], FileEdit)
    assert options["clamp"] in list(options.advanced)
    options["samples"].value = 8
    assert options.values() == {
        "steps": 16,
        "samples": 8,
        "prior_strength": 0.5,
        "weights_path": None,
        "clamp": True,
    }


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_adds_a_layer_that_lines_up_with_metadata(
    wait_idle, viewer_widget, simulated, method, errors
):
    viewer, widget = viewer_widget
    image = _load(viewer, simulated)
    _fast(widget, method)
    worker = widget.run()
    assert worker is not None
    wait_idle(widget)
    assert errors == []
    layer = viewer.layers[f"cells deconvolved ({method})"]
    assert layer.data.dtype == np.float32
    assert layer.data.shape == image.data.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert np.isfinite(layer.data).all() and layer.data.max() > 0
    assert not np.allclose(layer.data, image.data)
    low, high = layer.contrast_limits
    assert low <= 0 < high <= layer.data.max()
    meta = layer.metadata["deconflow"]
    assert meta["settings"]["method"] == method
    assert meta["provenance"]["settings"]["voxel_size_um"] == pytest.approx(list(SCALE))
    assert "deconflow_version" in meta["provenance"]
    assert widget.progress.value == widget.progress.max == widget.settings().solver.total_steps
    assert widget.status.value.startswith("done")
    std_name = f"cells deconvolved std ({method})"
    if method == "flow":  # posterior samples give an uncertainty layer, hidden
        assert not viewer.layers[std_name].visible
        np.testing.assert_allclose(viewer.layers[std_name].scale, image.scale)
    else:
        assert std_name not in viewer.layers


def test_the_std_layer_of_a_source_named_with_the_method_is_named_once(
    wait_idle, viewer_widget, simulated
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured[:, :32, :32], name="cells (flow)", scale=SCALE)
    viewer.add_image(psf, name="bead psf", scale=SCALE)
    _fast(widget, "flow")
    widget.method_options["flow"]["samples"].value = 1
    widget.run()
    wait_idle(widget, timeout=120_000)
    # the std name was the output's with every "(flow)" edited: "cells std (flow) ..."
    assert "cells (flow) deconvolved std (flow)" in viewer.layers
    assert "cells (flow) deconvolved (flow)" in viewer.layers


def test_rerun_replaces_the_layer_of_that_method(wait_idle, viewer_widget, simulated):
    viewer, widget = viewer_widget
    _load(viewer, simulated)
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    first = viewer.layers["cells deconvolved (rl)"]
    before = first.data.copy()
    widget.method_options["rl"]["iterations"].value = 3
    widget.run()
    wait_idle(widget)
    assert [layer.name for layer in viewer.layers].count("cells deconvolved (rl)") == 1
    assert len(viewer.layers) == 3
    layer = viewer.layers["cells deconvolved (rl)"]
    assert layer.metadata["deconflow"]["settings"]["rl"]["iterations"] == 3
    assert not np.array_equal(layer.data, before)


def test_the_contrast_slider_spans_the_result_also_when_it_is_replaced(
    wait_idle, viewer_widget, simulated
):
    viewer, widget = viewer_widget
    image = _load(viewer, simulated)
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    layer = viewer.layers["cells deconvolved (rl)"]
    # napari took the range from the limits: the brightest voxels were out of the slider's
    assert layer.contrast_limits_range[1] == pytest.approx(layer.data.max())
    image.data = image.data / 100  # e.g. rescaled: the result is 100 times dimmer
    widget.run()
    wait_idle(widget)
    assert viewer.layers["cells deconvolved (rl)"] is layer
    low, high = layer.contrast_limits_range  # was the first result's, 100 times too wide
    assert low <= layer.contrast_limits[0] and high == pytest.approx(layer.data.max())


def test_cancel_stops_within_a_step_and_leaves_the_viewer_unchanged(
    qtbot, wait_idle, viewer_widget, simulated
):
    viewer, widget = viewer_widget
    _load(viewer, simulated)
    widget.method.value = "rl"
    widget.method_options["rl"]["iterations"].value = 5000  # minutes if it were not stopped
    names = [layer.name for layer in viewer.layers]
    worker = widget.run()
    steps: list[int] = []
    worker.yielded.connect(lambda event: steps.append(event.step))
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget.progress.value >= 3, timeout=20_000)
    widget.cancel_button.clicked.emit()
    at_cancel = max(steps)
    wait_idle(widget, timeout=10_000)
    assert max(steps) <= at_cancel + 2  # the step in flight, and one queued event at most
    assert [layer.name for layer in viewer.layers] == names
    assert widget.status.value == "cancelled"
    assert widget.progress.value < widget.progress.max
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_cancel_after_the_last_step_ends_cancelled_not_cancelling(
    qtbot, wait_idle, viewer_widget, simulated, monkeypatch
):
    viewer, widget = viewer_widget
    _load(viewer, simulated)
    _fast(widget, "rl")
    names = [layer.name for layer in viewer.layers]
    assembling, release = threading.Event(), threading.Event()

    def slow_to_finish(job):
        outcome = yield from _jobs.run_events(job)
        assembling.set()  # every step done; the result is being put together
        release.wait(10)
        return outcome

    monkeypatch.setattr(_widget, "run_events", slow_to_finish)
    widget.run()
    qtbot.waitUntil(assembling.is_set, timeout=20_000)
    widget.cancel_button.clicked.emit()
    release.set()
    wait_idle(widget)
    # superqt emits neither "aborted" nor "returned" here: the status stayed "cancelling…"
    assert widget.status.value == "cancelled"
    assert [layer.name for layer in viewer.layers] == names
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_closing_the_viewer_during_a_run_stops_it_without_errors(qtbot, viewer_widget, simulated):
    viewer, widget = viewer_widget
    _load(viewer, simulated)
    widget.method.value = "rl"
    widget.method_options["rl"]["iterations"].value = 5000  # minutes if it were not stopped
    worker = widget.run()
    steps: list[int] = []
    worker.yielded.connect(lambda event: steps.append(event.step))
    qtbot.waitUntil(lambda: len(steps) >= 3, timeout=20_000)
    # each progress event after this raised on a deleted widget (pytest-qt fails the test on
    # an exception in a slot; outside napari's event loop, PyQt aborted the process)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=10_000)
    qtbot.wait(200)  # events queued before the worker stopped are delivered (or dropped)
    assert max(steps) < 1000
    assert widget.worker is None


def test_nan_psf_shows_an_error_notification_without_crashing(
    wait_idle, viewer_widget, simulated, errors
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    bad = psf.copy()
    bad[3, 4, 5] = np.nan
    viewer.add_image(bad, name="nan psf", scale=SCALE)
    widget.image.value = viewer.layers["cells"]
    widget.psf_layer.value = viewer.layers["nan psf"]
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    assert len(errors) == 1 and "NaN" in errors[0]
    assert len(viewer.layers) == 2
    assert widget.status.value == "failed" and widget.run_button.enabled
    # a form error (no PSF file chosen) is reported the same way, before any thread starts
    widget.psf_source.value = "file"
    assert widget.run() is None
    assert len(errors) == 2 and "PSF" in errors[1]


def test_preview_runs_on_a_region_around_the_current_slice(wait_idle, viewer_widget, simulated):
    viewer, widget = viewer_widget
    image = _load(viewer, simulated)
    _fast(widget, "rl")
    widget.show_advanced.value = True
    widget.preview_planes.value = 4
    widget.preview_size.value = 16
    viewer.dims.set_point(0, TRANSLATE[0] + 10 * SCALE[0])  # plane 10
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (0.0, TRANSLATE[1] + 30 * SCALE[1], TRANSLATE[2] + 20 * SCALE[2])
    widget.run(preview=True)
    wait_idle(widget)
    layer = viewer.layers["cells preview (rl)"]
    assert layer.data.shape == (4, 16, 16)
    start = np.array([8, 22, 12])  # centred on (10, 30, 20)
    np.testing.assert_allclose(layer.translate, np.add(TRANSLATE, start * np.array(SCALE)))
    np.testing.assert_allclose(layer.scale, image.scale)
    assert "cells deconvolved (rl)" not in viewer.layers
    z, y, x = start
    crop = image.data[z : z + 4, y : y + 16, x : x + 16]
    expected = deconflow.deconvolve(
        crop, viewer.layers["bead psf"].data, voxel_size=SCALE, iterations=2
    )
    np.testing.assert_allclose(layer.data, expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_previews_leave_the_input_layer_where_it_is(wait_idle, viewer_widget, simulated):
    viewer, widget = viewer_widget
    image = _load(viewer, simulated)
    _fast(widget, "rl")
    widget.show_advanced.value = True
    widget.preview_size.value = 16
    placed = []
    for _ in range(2):  # the same spot twice: the same crop, at the same place
        widget.run(preview=True)
        wait_idle(widget)
        placed.append(np.array(viewer.layers["cells preview (rl)"].translate))
        # each preview shifted the input's translate in place by the crop's offset
        np.testing.assert_allclose(image.translate, TRANSLATE)
    np.testing.assert_allclose(placed[1], placed[0])
    widget.run()
    wait_idle(widget)
    np.testing.assert_allclose(viewer.layers["cells deconvolved (rl)"].translate, TRANSLATE)


def test_results_overlay_a_rotated_sheared_input_full_and_preview(
    wait_idle, viewer_widget, simulated
):
    # a deskewed light-sheet stack is shown sheared, a tilted sample rotated: the result and
    # its preview must land on the input's voxels, not on an unrotated box beside them
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    small = measured[:8, :32, :32]
    stack = np.stack([small, 2 * small])  # CZYX; the channel axis is dropped by a preview
    angle = np.deg2rad(30.0)
    rotate = np.eye(4)
    rotate[2:, 2:] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    extra = np.eye(5)
    extra[1:4, 4] = (5.0, -3.0, 2.0)
    raw = viewer.add_image(
        stack,
        name="tilted",
        scale=(1.0, *SCALE),
        translate=(0.0, *TRANSLATE),
        rotate=rotate,
        shear=[0, 0, 0, 0, 0.4, 0],  # y shears along z (upper triangle, row-major)
        affine=extra,
    )
    viewer.add_image(psf, name="bead psf", scale=SCALE)
    widget.image.value = raw
    widget.psf_layer.value = viewer.layers["bead psf"]
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    full = viewer.layers["tilted deconvolved (rl)"]
    for point in [(0, 0, 0, 0), (1, 7, 31, 5), (0, 3, 10, 20)]:
        np.testing.assert_allclose(full.data_to_world(point), raw.data_to_world(point))

    widget.show_advanced.value = True
    widget.preview_planes.value = 4
    widget.preview_size.value = 16
    viewer.dims.set_point(1, float(raw.data_to_world((0, 4, 16, 16))[1]))
    widget.run(preview=True)
    wait_idle(widget)
    preview = viewer.layers["tilted preview (rl)"]
    assert preview.data.shape == (4, 16, 16)
    start = _crop_offset(preview, raw)  # whole voxels of the input, or the placement is off
    for local in [(0, 0, 0), (3, 15, 15), (2, 5, 9)]:
        np.testing.assert_allclose(
            preview.data_to_world(local)[-3:],
            raw.data_to_world((0, *np.add(start, local)))[-3:],
            atol=1e-9,
        )
    z, y, x = start  # and that is the crop it shows (channel 0, the dims' current one)
    expected = deconflow.deconvolve(
        stack[0, z : z + 4, y : y + 16, x : x + 16], psf, voxel_size=SCALE, iterations=2
    )
    np.testing.assert_allclose(preview.data, expected, rtol=1e-4, atol=1e-4 * expected.max())


def _crop_offset(preview, raw) -> tuple[int, ...]:
    """The input voxel under the preview's first voxel (the crop is whole voxels)."""
    world = preview.data_to_world((0, 0, 0))
    data = raw.world_to_data((0.0, *world))[-3:]
    offset = tuple(int(np.rint(v)) for v in data)
    np.testing.assert_allclose(data, offset, atol=1e-6)
    return offset


def test_multichannel_runs_per_channel_with_progress_over_all(wait_idle, viewer_widget, simulated):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    small = measured[:8, :32, :32]
    stack = np.stack([small, 2 * small[::-1]])  # CZYX
    raw = viewer.add_image(stack, name="two channels", scale=(1.0, *SCALE))
    viewer.add_image(np.stack([psf, psf]), name="psf per channel", scale=(1.0, *SCALE))
    widget.image.value = raw
    assert widget.axes.value == "CZYX"
    assert widget.voxel.get(3) == pytest.approx(SCALE)
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    layer = viewer.layers["two channels deconvolved (rl)"]
    assert layer.data.shape == stack.shape and layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.scale, raw.scale)
    assert widget.progress.value == widget.progress.max == 2 * 2
    assert layer.metadata["deconflow"]["provenance"]["axes"] == "CZYX"
    assert len(layer.metadata["deconflow"]["provenance"]["backgrounds"]) == 2
    expected = deconflow.deconvolve(stack[1], psf, voxel_size=SCALE, iterations=2)
    np.testing.assert_allclose(layer.data[1], expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_psf_from_a_file_fills_its_voxel_size(wait_idle, viewer_widget, simulated, tmp_path):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    path = write_tiff(tmp_path / "bead.tif", psf, voxel_size_um=(0.1, 0.04, 0.04))
    widget.psf_source.value = "file"
    widget.psf_file.value = path
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04), rel=1e-4)
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    layer = viewer.layers["cells deconvolved (rl)"]
    settings = layer.metadata["deconflow"]["settings"]
    assert settings["psf_voxel_size_um"] == pytest.approx([0.1, 0.04, 0.04], rel=1e-4)


def test_settings_round_trip_through_the_form(viewer_widget):
    _, widget = viewer_widget
    settings = deconflow.DeconvolutionSettings.from_options(
        "rl-tv",
        voxel_size=(0.3, 0.1, 0.1),
        psf_voxel_size=(0.3, 0.1, 0.1),
        iterations=7,
        tv_weight=0.004,
        background=5.0,
    )
    widget.set_settings(settings)
    assert widget.settings() == settings
    wiener = deconflow.DeconvolutionSettings.from_options("wiener", regularization=0.01)
    widget.set_settings(wiener)
    assert widget.settings().wiener.regularization == pytest.approx(0.01)
    widget.method_options["wiener"]["regularization"].value = "auto"
    assert widget.settings().wiener.regularization is None
    assert isinstance(widget.method_options["wiener"]["regularization"], LineEdit)
    # a file's sections of the methods not chosen are loaded too, for a later switch
    widget.method_options["rl-tv"]["tv_weight"].value = 0.05
    widget.set_settings(dataclasses.replace(settings, method="rl"))
    widget.method.value = "rl-tv"
    assert widget.settings() == settings


def test_a_small_background_of_a_float_image_survives_the_form(viewer_widget):
    _, widget = viewer_widget
    settings = DeconvolutionSettings(background=0.0042)  # images scaled to 0..1
    widget.set_settings(settings)
    assert widget.settings().background == pytest.approx(0.0042)  # was 0.0 (2 decimals)


def test_every_setting_a_yaml_file_can_hold_survives_the_form(viewer_widget):
    """Options with a non-None default can be set to None, shared options are in the form."""
    _, widget = viewer_widget
    flow = deconflow.DeconvolutionSettings.from_options(
        "flow",
        voxel_size=(0.3, 0.1, 0.1),
        psf_voxel_size=(0.3, 0.1, 0.1),
        device="cuda:1",  # a second GPU: kept, not replaced by "auto"
        seed=None,  # a fresh seed each run (the default is 0)
        precision="float32",
        tile_shape=(16, 96, 96),
        memory_budget_gb=2.5,
        camera_offset=100.0,
    )
    widget.set_settings(flow)
    assert widget.settings() == flow
    # typed by hand: "auto" is None where None is allowed, and a value of its own elsewhere
    widget.set_settings(deconflow.DeconvolutionSettings(method="flow"))
    options = widget.method_options["flow"]
    options["seed"].value = "auto"
    options["precision"].value = "auto"
    widget.common_options["tile_shape"].value = "32, 128, 128"
    settings = widget.settings()
    assert settings.flow.seed is None and settings.flow.precision == "auto"
    assert settings.tile_shape == (32, 128, 128)
    assert widget.common_options["tile_shape"] in widget._advanced
    # a weights file from earlier settings does not outlive settings without one
    options["weights"].value = __file__
    widget.set_settings(deconflow.DeconvolutionSettings(method="flow"))
    assert widget.settings().flow.weights is None
    # Wiener's iterations=0 (the one-shot Fourier filter) is a valid setting
    wiener = deconflow.DeconvolutionSettings.from_options("wiener", iterations=0)
    widget.set_settings(wiener)
    assert widget.settings().wiener.iterations == 0


@pytest.mark.parametrize(
    ("shape", "psf_ndim", "axes", "volumes"),
    [
        ((48, 48), 3, "YX", "2D (YX)"),  # was "Got 17 PSFs for 1 channels"
        ((16, 48, 48), 2, "ZYX", "3D (ZYX)"),
        ((2, 8, 32, 32), 2, "CZYX", "3D (ZYX)"),  # was "ValueError: zip() argument 2 ..."
    ],
)
def test_a_psf_with_other_axes_than_the_image_is_named_in_the_error(
    wait_idle, viewer_widget, simulated, errors, shape, psf_ndim, axes, volumes
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    image = viewer.add_image(np.full(shape, measured.mean(), np.float32), name="cells")
    viewer.add_image(psf if psf_ndim == 3 else psf[psf.shape[0] // 2], name="bead psf")
    widget.image.value = image
    assert widget.axes.value == axes
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    assert len(errors) == 1
    assert f"PSF is {psf_ndim}D" in errors[0] and f"volumes are {volumes}" in errors[0]
    assert len(viewer.layers) == 2 and widget.status.value == "failed"


def test_psf_voxel_size_follows_the_psf_source(viewer_widget, simulated, tmp_path):
    viewer, widget = viewer_widget
    _load(viewer, simulated)  # the PSF layer's scale is SCALE
    path = write_tiff(tmp_path / "bead.tif", simulated[2], voxel_size_um=(0.1, 0.04, 0.04))
    widget.psf_source.value = "file"
    widget.psf_file.value = path
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04), rel=1e-4)
    widget.psf_source.value = "layer"  # the layer's PSF must not be read at the file's voxels
    assert widget.psf_voxel.get(3) == pytest.approx(SCALE)
    widget.psf_source.value = "file"
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04), rel=1e-4)


def test_a_psf_file_without_voxel_size_is_taken_at_the_image_voxel_size(
    viewer_widget, simulated, tmp_path
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    viewer.add_image(psf, name="bead psf", scale=(0.1, 0.04, 0.04))  # another PSF's layer
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04))
    path = write_tiff(tmp_path / "bead.tif", psf)  # no voxel size in the file
    widget.psf_source.value = "file"
    widget.psf_file.value = path
    # was the layer's (0.1, 0.04, 0.04): the file's PSF was resampled as if it had those
    # voxels, where the CLI takes a file without voxel size at the image's
    assert widget.psf_voxel.get(3) == pytest.approx(SCALE)
    assert widget.settings().psf_voxel_size_um == pytest.approx(SCALE)


def test_a_psf_layer_without_voxel_size_is_taken_at_the_image_voxel_size(viewer_widget, simulated):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    viewer.add_image(psf, name="bead psf")  # napari's default scale: 1 on every axis
    # was (1, 1, 1): the PSF was resampled as if its voxels were 1 µm, about ten times
    # too coarse, where a PSF file without voxel size is taken at the image's
    assert widget.psf_voxel.get(3) == pytest.approx(SCALE)
    assert widget.settings().psf_voxel_size_um == pytest.approx(SCALE)
    other = viewer.add_image(psf, name="other psf", scale=(0.1, 0.04, 0.04))
    widget.psf_layer.value = other  # a layer with a voxel size keeps its own
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04))


OTHER = (0.3, 0.1, 0.1)  # another image's voxel size


def _choose_psf(viewer, widget, psf, source, tmp_path, voxel_size_um=None) -> None:
    """Take ``psf`` from a layer or a TIFF file, with or without a voxel size of its own."""
    if source == "layer":
        scale = voxel_size_um or (1.0, 1.0, 1.0)  # napari's default: no voxel size
        widget.psf_layer.value = viewer.add_image(psf, name="bead psf", scale=scale)
    else:
        widget.psf_source.value = "file"
        widget.psf_file.value = write_tiff(tmp_path / "bead.tif", psf, voxel_size_um=voxel_size_um)


@pytest.mark.parametrize("source", ["layer", "file"])
def test_a_psf_without_voxel_size_follows_the_image_voxel_size(
    viewer_widget, simulated, tmp_path, source
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    _choose_psf(viewer, widget, psf, source, tmp_path)
    assert widget.psf_voxel.get(3) == pytest.approx(SCALE)
    widget.image.value = viewer.add_image(measured, name="other cells", scale=OTHER)
    # was SCALE: the PSF kept the first image's voxel size and was resampled wrongly
    assert widget.psf_voxel.get(3) == pytest.approx(OTHER)
    assert widget.settings().psf_voxel_size_um == pytest.approx(OTHER)
    widget.voxel.set((0.25, 0.1, 0.1))  # the image's voxel size typed: the PSF's follows too
    assert widget.psf_voxel.get(3) == pytest.approx((0.25, 0.1, 0.1))


def test_a_typed_psf_voxel_size_stops_following_the_image(viewer_widget, simulated, tmp_path):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    _choose_psf(viewer, widget, psf, "layer", tmp_path)  # no voxel size: the image's
    other = viewer.add_image(measured, name="other cells", scale=OTHER)
    widget.image.value = other
    assert widget.psf_voxel.get(3) == pytest.approx(OTHER)
    widget.psf_voxel[0].native.setValue(0.15)  # as typing into the z box does
    typed = (0.15, *OTHER[1:])
    widget.image.value = viewer.layers["cells"]
    assert widget.psf_voxel.get(3) == pytest.approx(typed)
    assert widget.settings().psf_voxel_size_um == pytest.approx(typed)
    # a PSF voxel size loaded from settings is the user's as well
    loaded = DeconvolutionSettings(voxel_size_um=SCALE, psf_voxel_size_um=(0.25, 0.04, 0.04))
    widget.set_settings(loaded)
    widget.image.value = other
    assert widget.psf_voxel.get(3) == pytest.approx((0.25, 0.04, 0.04))
    # settings without one put the PSF at the image's voxel size, as the pipeline does
    widget.set_settings(DeconvolutionSettings(voxel_size_um=SCALE))
    assert widget.psf_voxel.get(3) == pytest.approx(SCALE)
    widget.voxel.set(OTHER)
    assert widget.psf_voxel.get(3) == pytest.approx(OTHER)


@pytest.mark.parametrize("source", ["layer", "file"])
def test_a_psf_with_its_own_voxel_size_does_not_follow_the_image(
    viewer_widget, simulated, tmp_path, source
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    _choose_psf(viewer, widget, psf, source, tmp_path, voxel_size_um=(0.1, 0.04, 0.04))
    widget.image.value = viewer.add_image(measured, name="other cells", scale=OTHER)
    assert widget.voxel.get(3) == pytest.approx(OTHER)
    # a file's was SCALE: the layer picker, moved off the new image onto "cells", replaced
    # the file's voxel size with that layer's although the PSF came from the file
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04), rel=1e-4)


def test_a_typed_psf_voxel_size_survives_layers_being_added_or_removed(
    wait_idle, viewer_widget, simulated, tmp_path
):
    viewer, widget = viewer_widget
    _load(viewer, simulated)  # the PSF layer's scale is SCALE
    typed = (0.3, 0.05, 0.05)  # e.g. a PSF opened from a file without voxel metadata
    widget.psf_voxel.set(typed)
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)  # the result layer is inserted: the pickers refresh
    viewer.add_image(np.zeros((4, 4)), name="another")
    viewer.layers.remove("another")
    # was reset to the PSF layer's scale, so the next run resampled the PSF wrongly
    assert widget.psf_voxel.get(3) == pytest.approx(typed)
    assert widget.settings().psf_voxel_size_um == pytest.approx(typed)
    loaded = DeconvolutionSettings(voxel_size_um=SCALE, psf_voxel_size_um=(0.25, 0.04, 0.04))
    widget.set_settings(loaded)  # e.g. from a YAML file
    viewer.add_image(np.zeros((4, 4)), name="another")
    assert widget.settings().psf_voxel_size_um == pytest.approx((0.25, 0.04, 0.04))
    # choosing another PSF still takes that PSF's voxel size
    other = viewer.add_image(simulated[2], name="other psf", scale=(0.1, 0.04, 0.04))
    widget.psf_layer.value = other
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04))


def test_flow_on_a_multichannel_layer_gives_its_std_layer(wait_idle, viewer_widget, simulated):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    small = measured[:8, :32, :32]
    stack = np.stack([small, 2 * small])  # CZYX
    raw = viewer.add_image(stack, name="two channels", scale=(1.0, *SCALE))
    viewer.add_image(psf, name="bead psf", scale=SCALE)
    widget.image.value = raw
    _fast(widget, "flow")
    widget.method_options["flow"]["choose_strength"].value = False
    widget.run()
    wait_idle(widget, timeout=120_000)
    std = viewer.layers["two channels deconvolved std (flow)"]
    assert std.data.shape == stack.shape and not std.visible
    assert np.isfinite(std.data).all() and (std.data.reshape(2, -1).max(axis=1) > 0).all()
    np.testing.assert_allclose(std.scale, raw.scale)


def test_preview_of_a_time_lapse_uses_the_current_time_point(wait_idle, viewer_widget, simulated):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    small = measured[:8, :32, :32]
    frames = viewer.add_image(np.stack([small, 2 * small, 3 * small]), name="tl", scale=(5, *SCALE))
    viewer.add_image(psf, name="bead psf", scale=SCALE)
    widget.image.value = frames
    widget.axes.value = "TZYX"
    _fast(widget, "rl")
    widget.show_advanced.value = True
    widget.preview_size.value = 16
    viewer.dims.set_point(0, 2 * 5.0)  # time point 2
    widget.run(preview=True)
    wait_idle(widget)
    layer = viewer.layers["tl preview (rl)"]
    assert layer.data.shape == (8, 16, 16) and layer.ndim == 3
    start = np.round(np.asarray(layer.translate) / np.asarray(SCALE)).astype(int)
    z, y, x = start
    crop = 3 * small[z : z + 8, y : y + 16, x : x + 16]
    expected = deconflow.deconvolve(crop, psf, voxel_size=SCALE, iterations=2)
    np.testing.assert_allclose(layer.data, expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_an_unknown_device_from_settings_is_an_error_not_auto(
    wait_idle, viewer_widget, simulated, errors
):
    viewer, widget = viewer_widget
    _load(viewer, simulated)
    # a well-formed name this machine lacks (settings refuse a malformed one when built)
    widget.set_settings(deconflow.DeconvolutionSettings(device="cuda:99"))
    assert widget.device.value == "cuda:99"  # was silently replaced by "auto"
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    assert len(errors) == 1 and "cuda" in errors[0]
    assert len(viewer.layers) == 2


def test_a_layer_scaled_in_nanometres_gives_voxel_sizes_in_micrometres(
    wait_idle, viewer_widget, simulated
):
    # a reader that keeps the file's units (OME-Zarr, bioio) gives scale (200, 80, 80) in nm
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    nm = tuple(1000 * s for s in SCALE)
    image = viewer.add_image(measured, name="cells", scale=nm, units="nm")
    viewer.add_image(psf, name="bead psf", scale=(100.0, 40.0, 40.0), units="nm")
    # was (200, 80, 80) "µm": a thousand times too coarse, the PSF resampled to a point
    assert widget.voxel.get(3) == pytest.approx(SCALE)
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.04, 0.04))
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    layer = viewer.layers["cells deconvolved (rl)"]
    # the result keeps the input's units, or its scale of 200 would be 200 pixels
    assert layer.units == image.units
    np.testing.assert_allclose(layer.scale, image.scale)


def test_a_scale_set_after_adding_the_layers_is_taken(wait_idle, viewer_widget, simulated):
    # napari's own TIFF reader sets no scale: a script sets it after adding the layers, and
    # the form kept 1 µm, which the run used while its result was placed at the new scale
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    cells = viewer.add_image(measured, name="cells")
    bead = viewer.add_image(psf[:, 4:-4, 4:-4], name="bead psf")
    cells.scale = SCALE
    bead.scale = (0.1, 0.1, 0.1)
    assert widget.voxel.get(3) == pytest.approx(SCALE)
    assert widget.psf_voxel.get(3) == pytest.approx((0.1, 0.1, 0.1))
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    settings = viewer.layers["cells deconvolved (rl)"].metadata["deconflow"]["settings"]
    assert settings["voxel_size_um"] == pytest.approx(list(SCALE))
    assert settings["psf_voxel_size_um"] == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.parametrize(
    ("labels", "axes"),
    [
        (("t", "z", "y", "x"), "TZYX"),  # was CZYX: the time points taken for channels
        (("time", "channel", "z", "y", "x"), "TCZYX"),
        (("c", "y", "x"), "CYX"),  # was ZYX: two colours deconvolved as two planes
        (("-4", "-3", "-2", "-1"), "CZYX"),  # napari's default labels: guessed by ndim
        (("a", "b", "y", "x"), "CZYX"),  # labels that are not axes: guessed by ndim
    ],
)
def test_axes_follow_the_layer_axis_labels(viewer_widget, simulated, labels, axes):
    viewer, widget = viewer_widget
    shape = (2, 3, 8, 16, 16)[-len(labels) :]
    layer = viewer.add_image(np.zeros(shape, np.float32), name="stack", axis_labels=labels)
    widget.image.value = layer
    assert widget.axes.value == axes


def test_an_emptied_axes_field_takes_the_layer_axes(wait_idle, viewer_widget, simulated, errors):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured[8], name="plane", scale=SCALE[1:])
    viewer.add_image(psf[8], name="bead psf", scale=SCALE[1:])
    _fast(widget, "rl")
    widget.axes.value = ""  # a run takes the layer's axes (YX); the voxel sizes were 3
    assert widget.run() is not None
    wait_idle(widget)
    assert errors == []
    assert viewer.layers["plane deconvolved (rl)"].data.shape == measured[8].shape


@pytest.mark.parametrize("preview", [False, True])
def test_an_rgb_layer_is_refused_with_a_message_naming_rgb(
    wait_idle, viewer_widget, simulated, errors, preview
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    plane = (255 * measured[8] / measured[8].max()).astype(np.uint8)
    rgb = viewer.add_image(np.stack([plane] * 3, axis=-1), name="screenshot", rgb=True)
    viewer.add_image(psf[8], name="bead psf")
    widget.image.value = rgb
    _fast(widget, "rl")
    widget.run(preview=preview)
    wait_idle(widget)
    # the preview was "ValueError: zip() argument 2 is longer than argument 1"
    assert len(errors) == 1 and "RGB" in errors[0]
    assert len(viewer.layers) == 2 and widget.run_button.enabled


def test_choosing_the_image_moves_the_psf_picker_off_it(viewer_widget, simulated):
    # the bead opened first: the image picker starts on it and the PSF picker, kept off the
    # image, on the stack opened next
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    bead = viewer.add_image(psf, name="bead psf")  # no voxel size: taken at the image's
    cells = viewer.add_image(measured, name="cells", scale=SCALE)
    widget.image.value = cells
    # was "cells": the stack deconvolved with itself as the PSF
    assert widget.psf_layer.value is bead
    assert widget.psf_voxel.get(3) == pytest.approx(SCALE)


def test_an_image_without_a_psf_layer_is_not_its_own_psf(viewer_widget, simulated, errors):
    # with one layer open the PSF picker holds the image: Run deconvolved it with itself
    viewer, widget = viewer_widget
    measured, _, _ = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    _fast(widget, "rl")
    assert widget.run() is None
    assert len(errors) == 1 and "PSF layer is the image 'cells' itself" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_a_multiscale_layer_is_deconvolved_at_full_resolution(wait_idle, viewer_widget, simulated):
    # an OME-Zarr pyramid (napari-ome-zarr) opens as a multiscale layer: it was left out of
    # the image picker, so "Choose an image layer" was all a user got
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    pyramid = [measured, measured[:, ::2, ::2]]
    layer = viewer.add_image(pyramid, multiscale=True, name="pyramid", scale=SCALE)
    viewer.add_image(psf, name="bead psf", scale=SCALE)
    assert layer in widget.image.choices
    assert layer not in widget.psf_layer.choices
    widget.image.value = layer
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    result = viewer.layers["pyramid deconvolved (rl)"]
    expected = deconflow.deconvolve(measured, psf, voxel_size=SCALE, iterations=2)
    np.testing.assert_allclose(result.data, expected, rtol=1e-4, atol=1e-4 * expected.max())
    np.testing.assert_allclose(result.scale, SCALE)
    widget.show_advanced.value = True
    widget.preview_planes.value = 4
    widget.preview_size.value = 16
    widget.run(preview=True)
    wait_idle(widget)
    assert viewer.layers["pyramid preview (rl)"].data.shape == (4, 16, 16)


def _write_in_plane_only(path, psf, pixel):
    """A PSF OME-TIFF with PhysicalSizeY/X but no PhysicalSizeZ."""
    import tifffile

    meta = {"axes": "ZYX", "PhysicalSizeY": pixel[0], "PhysicalSizeX": pixel[1]}
    tifffile.imwrite(path, psf, ome=True, metadata=meta)
    return path


def test_a_psf_file_with_a_pixel_size_but_no_z_step_keeps_its_pixel_size(
    wait_idle, viewer_widget, simulated, tmp_path, warnings_shown
):
    # was taken at the image's whole voxel size: the pixel size the file records was
    # dropped, and the PSF resampled as if its pixels were the image's
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    viewer.add_image(psf, name="bead psf")  # napari's default scale: the image's voxel size
    assert widget.psf_voxel.get(3) == pytest.approx(SCALE)
    widget.psf_source.value = "file"
    widget.psf_file.value = _write_in_plane_only(tmp_path / "bead.ome.tif", psf, (0.04, 0.05))
    # the file's pixel size, the z step from the field: the image's, as it was shown
    assert widget.psf_voxel.get(3) == pytest.approx((SCALE[0], 0.04, 0.05))
    assert len(warnings_shown) == 1, warnings_shown
    assert "bead.ome.tif" in warnings_shown[0] and "no z step" in warnings_shown[0]
    assert "0.2 µm (the image's)" in warnings_shown[0]
    # the z step follows the image's as the whole voxel size did; the pixel size stays
    widget.image.value = viewer.add_image(measured, name="other cells", scale=OTHER)
    assert widget.psf_voxel.get(3) == pytest.approx((OTHER[0], 0.04, 0.05))
    widget.image.value = viewer.layers["cells"]
    assert widget.settings().psf_voxel_size_um == pytest.approx((SCALE[0], 0.04, 0.05))
    _fast(widget, "rl")
    widget.run()
    wait_idle(widget)
    settings = viewer.layers["cells deconvolved (rl)"].metadata["deconflow"]["settings"]
    assert settings["psf_voxel_size_um"] == pytest.approx([SCALE[0], 0.04, 0.05])
    # a z step typed before choosing the file is kept, and no longer follows the image
    widget.psf_voxel[0].native.setValue(0.15)
    widget.psf_file.value = _write_in_plane_only(tmp_path / "bead2.ome.tif", psf, (0.03, 0.03))
    assert widget.psf_voxel.get(3) == pytest.approx((0.15, 0.03, 0.03))
    assert "0.15 µm (the one in the field)" in warnings_shown[-1]
    widget.image.value = viewer.layers["other cells"]
    assert widget.psf_voxel.get(3) == pytest.approx((0.15, 0.03, 0.03))


def test_a_z_step_alone_from_settings_fills_only_the_z_boxes(viewer_widget, simulated):
    # deconflow batch --write-config --voxel-size 0.4 writes voxel_size_um: [0.4]; the form
    # put 0.4 into the x box, as if it were a size (x,)
    viewer, widget = viewer_widget
    viewer.add_image(simulated[0], name="cells", scale=SCALE)
    widget.set_settings(DeconvolutionSettings(voxel_size_um=(0.4,), psf_voxel_size_um=(0.5,)))
    assert widget.voxel.get(3) == pytest.approx((0.4, *SCALE[1:]))
    assert widget.psf_voxel.get(3) == pytest.approx((0.5, *SCALE[1:]))


@pytest.mark.parametrize("background", [2e-7, 3.5e-9, 0.0042, 123456.789])
def test_a_background_of_any_magnitude_survives_the_form(viewer_widget, background):
    # a spin box with 6 decimals read 2e-7 (an image scaled to unit sum) as 0.0
    _, widget = viewer_widget
    widget.set_settings(DeconvolutionSettings(background=background))
    assert widget.settings().background == background


def test_a_typed_background_in_scientific_notation_is_read(viewer_widget, errors):
    viewer, widget = viewer_widget
    widget.background_auto.value = False
    widget.background.value = "2.5e-7"
    assert widget.settings().background == 2.5e-7
    widget.background.value = "0,004"  # a decimal comma
    assert widget.settings().background == 0.004
    viewer.add_image(np.ones((8, 16, 16), np.float32), name="cells")
    for text, message in (("about 3", "Background: cannot read"), ("-1", "background must")):
        widget.background.value = text
        assert widget.run() is None
        assert message in errors[-1], errors


def test_a_z_scale_of_1_beside_a_pixel_size_is_kept_with_a_warning(
    viewer_widget, simulated, warnings_shown
):
    # napari gives an axis without a scale a scale of 1: a TIFF with XY resolution but no
    # z spacing opens as (1, py, px), and the z step of 1 µm was taken without a word
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=(1.0, 0.08, 0.08))
    assert widget.voxel.get(3) == pytest.approx((1.0, 0.08, 0.08))  # 1 µm can be real: kept
    assert len(warnings_shown) == 1, warnings_shown
    message = warnings_shown[0]
    assert "'cells'" in message and "1 µm" in message and "napari sets" in message
    assert widget.voxel.label in message  # the field to correct
    # once: another layer added (the pickers refreshed) does not warn again
    viewer.add_image(psf, name="bead psf", scale=SCALE)
    assert len(warnings_shown) == 1, warnings_shown


@pytest.mark.parametrize(
    "scale",
    [
        (1.0, 1.0, 1.0),  # napari's default on every axis: no voxel size, handled apart
        (0.2, 0.08, 0.08),  # a z step of its own
        (1.0, 1.0),  # a 2D image has no z step
    ],
)
def test_no_z_scale_warning_without_a_pixel_size_beside_it(
    viewer_widget, simulated, warnings_shown, scale
):
    viewer, widget = viewer_widget
    measured, _, _ = simulated
    data = measured if len(scale) == 3 else measured[0]
    viewer.add_image(data, name="cells", scale=scale)
    assert widget.voxel.get(len(scale)) == pytest.approx(scale)
    assert warnings_shown == []


def test_a_psf_layer_with_a_z_scale_of_1_beside_its_pixel_size_warns(
    viewer_widget, simulated, warnings_shown
):
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(measured, name="cells", scale=SCALE)
    viewer.add_image(psf, name="bead psf", scale=(1.0, 0.04, 0.04))
    assert widget.psf_voxel.get(3) == pytest.approx((1.0, 0.04, 0.04))
    assert len(warnings_shown) == 1, warnings_shown
    assert "'bead psf'" in warnings_shown[0] and widget.psf_voxel.label in warnings_shown[0]


def test_no_z_scale_warning_for_the_channel_axis_of_a_2d_image(
    viewer_widget, simulated, warnings_shown
):
    # a two-colour plane (CYX) and its PSFs, one per channel: their first axis is the
    # channel, whose scale of 1 is no z step
    viewer, widget = viewer_widget
    measured, _, psf = simulated
    viewer.add_image(
        measured[:2], name="two colours", scale=(1.0, 0.08, 0.08), axis_labels=("c", "y", "x")
    )
    viewer.add_image(psf[:2], name="bead psf", scale=(1.0, 0.08, 0.08))
    assert widget.axes.value == "CYX" and widget.psf_layer.value.name == "bead psf"
    assert warnings_shown == []
