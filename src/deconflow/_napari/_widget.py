"""The deconvolution dock widget.

The widget holds state (the running worker, which fields are shown), so it is a
magicgui ``Container``; its callbacks only gather values into a
:class:`~deconflow._napari._jobs.Job` and hand :func:`~deconflow._napari._jobs.run_events`
to napari's ``thread_worker``. The method list and each method's options come
from :mod:`deconflow.config`, so new methods appear here without edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import napari
import numpy as np
import torch
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
    Widget,
)
from napari.layers import Image
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_warning

from deconflow._errors import DeconflowError
from deconflow._napari._fields import MethodOptions, Options, method_label
from deconflow._napari._jobs import (
    Failure,
    Job,
    Placement,
    axes_of_layer,
    crop_around,
    run_events,
    show_result,
)
from deconflow.config import METHODS, DeconvolutionSettings
from deconflow.hyperstack import HyperstackResult, split_axes
from deconflow.io import read_tiff
from deconflow.pipeline import Progress, Result

__all__ = ["DeconvolutionWidget", "default_method"]

_DEVICES = ("auto", "cpu", "cuda")
#: Options of every method that the form shows in its advanced section.
_COMMON = {
    "tile_shape": "Largest tile z, y, x in voxels; 'auto' tiles only when the stack does not "
    "fit the memory budget",
    "memory_budget_gb": "Memory a run may plan for, in GB; 'auto': 50 % of the available RAM "
    "on the CPU, 80 % of the free GPU memory on CUDA",
}


def _device_choices() -> list[str]:
    """``auto``, ``cpu``, ``cuda`` and, with several GPUs, each of them (``cuda:N``)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [*_DEVICES, *(f"cuda:{i}" for i in range(count) if count > 1)]


def default_method() -> str:
    """Return the method the widget starts with: the settings' default (one source of truth)."""
    method = DeconvolutionSettings().method
    return method if method in METHODS else next(iter(METHODS))


class _VoxelEdit(Container):
    """Voxel size (z, y, x) in µm as three spin boxes in a row."""

    def __init__(self, label: str) -> None:
        boxes = [
            FloatSpinBox(value=1.0, min=1e-4, max=1e4, step=0.01, tooltip=f"{axis} (µm)")
            for axis in "zyx"
        ]
        for box in boxes:
            box.native.setDecimals(6)  # 4 would round 0.02196 µm to 0.022 (0.2 % off)
        super().__init__(widgets=boxes, layout="horizontal", labels=False, label=label)
        self.margins = (0, 0, 0, 0)
        self._boxes = boxes

    def get(self, ndim: int) -> tuple[float, ...]:
        """Return the last ``ndim`` sizes (``(y, x)`` for 2D data)."""
        return tuple(float(b.value) for b in self._boxes[3 - ndim :])

    def set(self, sizes: Sequence[float]) -> None:
        """Fill in ``(z, y, x)`` or ``(y, x)`` sizes, or with one number the z step alone."""
        # one number is the z step alone, as a settings file may hold it (deconflow batch
        # --write-config --voxel-size Z): the pixel size shown stays
        boxes = self._boxes[:1] if len(sizes) == 1 else self._boxes[3 - len(sizes) :]
        for box, value in zip(boxes, sizes, strict=True):
            box.value = float(value)


def _scale_um(layer: Image) -> tuple[float, ...]:
    """Return the spatial (last three, or two) scale factors of ``layer`` in µm.

    napari's scale is in the layer's ``units``: a reader that keeps a file's nanometres
    gives ``(200, 80, 80)``, which read as µm is a thousand times too coarse. Axes without
    a length unit (napari's default, ``pixel``) are taken to be in µm already.
    """
    spatial = min(layer.ndim, 3)
    units = getattr(layer, "units", None) or (None,) * layer.ndim  # napari < 0.6 has none
    sizes = []
    for value, unit in zip(layer.scale[-spatial:], units[-spatial:], strict=True):
        size = float(value)
        if unit is not None and (size * unit).check("[length]"):
            size = float((size * unit).to("micrometer").magnitude)
        sizes.append(size)
    return tuple(sizes)


def _z_scale_is_unset(layer: Image) -> bool:
    """Whether ``layer``'s z scale is napari's 1 for an axis without one, beside a y/x scale.

    napari gives every axis a reader left without a scale a scale of 1, so a z scale of
    exactly 1 beside a y/x scale that is not 1 most often means that the file recorded its
    pixel size but no z step (a TIFF with XY resolution only). A scale of 1 on all three
    axes is no voxel size at all, which the form handles apart.
    """
    if layer.ndim < 3:
        return False
    z, y, x = (float(v) for v in layer.scale[-3:])
    return z == 1.0 and (y, x) != (1.0, 1.0)


def _full_resolution(layer: Image) -> Any:
    """Return the layer's data at full resolution: level 0 of a multiscale (pyramid) layer.

    napari's data coordinates, scale and translate of a multiscale layer are level 0's, so
    crops and placement computed for a single-scale layer apply unchanged.
    """
    return layer.data[0] if layer.multiscale else layer.data


def _image_layers(viewer: napari.viewer.Viewer, prefer: Sequence[str] = ()) -> list[Any]:
    layers = [layer for layer in viewer.layers if isinstance(layer, Image)]
    if prefer:  # a PSF picker: deconflow's own outputs are never PSFs, nor are pyramids
        layers = [
            layer for layer in layers if "deconflow" not in layer.metadata and not layer.multiscale
        ]
    # a PSF picker should not default to the image: layers named like a PSF go first
    layers.sort(key=lambda layer: not any(w in layer.name.lower() for w in prefer))
    return [(layer.name, layer) for layer in layers]


class DeconvolutionWidget(Container):
    """Dock widget: deconvolve an image layer with a PSF layer or file.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are read and written (napari passes it).

    Attributes
    ----------
    method_options : dict of str to MethodOptions
        Each method's option widgets, by method name.
    worker : GeneratorWorker or None
        The running worker, ``None`` when idle.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.worker: GeneratorWorker | None = None
        # the PSF (layer or file path) whose voxel size the form last took: refreshing the
        # pickers (any layer added or removed) re-emits the current choice, and that must not
        # overwrite a PSF voxel size the user typed or loaded with set_settings
        self._psf_voxel_source: object = None
        # the PSF voxel sizes that are the image's and follow it: "zyx" for a PSF without
        # voxel metadata, "z" for a PSF file that records its pixel size but no z step,
        # "" for a PSF's own or typed sizes. Until a PSF is chosen its voxel size is the
        # image's, as the pipeline takes none. Without the following, choosing another
        # image (or typing its voxel size) would leave the PSF resampled at the old one's
        self._psf_voxel_follows = "zyx"
        self.image = ComboBox(label="Image", choices=lambda _: _image_layers(viewer))
        self.axes = LineEdit(label="Axes", tooltip="e.g. ZYX, CZYX, TCZYX")
        self.voxel = _VoxelEdit("Voxel zyx µm")
        self.psf_source = RadioButtons(
            label="PSF from", choices=["layer", "file"], orientation="horizontal"
        )
        self.psf_source.value = "layer"
        self.psf_layer = ComboBox(
            label="PSF layer", choices=lambda _: _image_layers(viewer, ("psf", "bead"))
        )
        self.psf_file = FileEdit(
            label="PSF file", mode=FileDialogMode.EXISTING_FILE, filter="*.tif *.tiff"
        )
        self.psf_voxel = _VoxelEdit("PSF voxel zyx µm")
        self.method = ComboBox(
            label="Method", choices=[(method_label(m), m) for m in METHODS], value=default_method()
        )
        self.method_options = {m: MethodOptions(m) for m in METHODS}
        self.device = ComboBox(label="Device", choices=_device_choices(), value="auto")
        self.show_advanced = CheckBox(text="Advanced options", value=False)
        self.background_auto = CheckBox(label="Estimate background", value=True)
        # text, not a spin box: a spin box rounds to its decimals (6 turned a background under
        # 5e-7, in a float image scaled to a sum or a small peak, into 0) and takes no "2e-7"
        self.background = LineEdit(
            label="Background",
            value="0",
            tooltip="Constant background in the image's units, e.g. 100 or 2e-7",
        )
        self.prepare_psf = CheckBox(label="Prepare PSF (bead)", value=True)
        self.common_options = Options(DeconvolutionSettings, tuple(_COMMON))
        for name, tooltip in _COMMON.items():
            self.common_options[name].tooltip = tooltip
        self.preview_size = SpinBox(label="Preview y, x (px)", value=64, min=8, max=2048)
        self.preview_planes = SpinBox(label="Preview z planes", value=9, min=1, max=1024)
        self.preview_button = PushButton(text="Preview")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.status = Label(label="Status", value="ready")
        self._advanced: list[Widget] = [self.background_auto, self.background, self.prepare_psf]
        self._advanced += list(self.common_options.widgets.values())
        self._advanced += [self.preview_size, self.preview_planes]
        self.extend(
            [self.image, self.axes, self.voxel, self.psf_source, self.psf_layer, self.psf_file]
            + [self.psf_voxel, self.method]
            + [o.main for o in self.method_options.values()]
            + [self.device, self.show_advanced]
            + [o.advanced for o in self.method_options.values()]
            + self._advanced
            + [self.preview_button, self.run_button, self.cancel_button]
            + [self.progress, self.status]
        )
        for options in self.method_options.values():
            options.main.label = options.advanced.label = ""
        self.image.changed.connect(self._on_image)
        self.psf_layer.changed.connect(self._on_psf_layer)
        self.psf_file.changed.connect(self._on_psf_file)
        self.psf_source.changed.connect(self._on_psf_source)
        self.voxel.changed.connect(self._on_image_voxel)
        self.psf_voxel.changed.connect(self._on_psf_voxel_typed)
        for widget in (self.psf_source, self.method, self.show_advanced, self.background_auto):
            widget.changed.connect(self._update_visibility)
        self.run_button.changed.connect(lambda: self.run())
        self.preview_button.changed.connect(lambda: self.run(preview=True))
        self.cancel_button.changed.connect(self.cancel)
        # the worker's signals connected to this form while a run goes on (see _on_destroyed)
        self._slots: list[tuple[Any, Any]] = []
        self.native.destroyed.connect(self._on_destroyed)
        # napari refreshes a docked widget's choices too; this also covers an undocked one
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()
        self._on_image(self.image.value)
        self._on_psf_layer(self.psf_layer.value)
        self._update_visibility()

    # -- keeping the form consistent ------------------------------------------
    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer pickers; keep the PSF picker off the image being deconvolved."""
        super().reset_choices()
        self._keep_psf_off_image()

    def _keep_psf_off_image(self) -> None:
        if self.psf_layer.value is not None and self.psf_layer.value is self.image.value:
            others = [c for c in self.psf_layer.choices if c is not self.image.value]
            if others:  # PSF-like names come first in the choices
                self.psf_layer.value = others[0]

    def _update_visibility(self) -> None:
        from_file = self.psf_source.value == "file"
        self.psf_layer.visible = not from_file
        self.psf_file.visible = from_file
        advanced = bool(self.show_advanced.value)
        for method, options in self.method_options.items():
            options.set_visible(method == self.method.value, advanced)
        for widget in self._advanced:
            widget.visible = advanced
        self.background.visible = advanced and not self.background_auto.value

    def _on_image(self, layer: Image | None) -> None:
        if layer is None:
            return
        self._follow_scale(layer)
        self.axes.value = axes_of_layer(layer)
        self._take_image_scale(layer)
        # after the voxel size: a PSF layer without one is then taken at this image's
        self._keep_psf_off_image()

    def _follow_scale(self, layer: Image) -> None:
        """Take ``layer``'s voxel size again when its scale (or units) change while chosen.

        A scripted session often sets ``layer.scale`` after adding the layer (napari's own
        TIFF reader sets none); the form kept the scale it had when chosen, 1 µm, and the
        run deconvolved at that voxel size while its result was placed at the new scale.
        napari connects a callback once however often it is connected.
        """
        for name in ("scale", "units"):  # napari < 0.6 has no units
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layer_scale)

    def _on_layer_scale(self, event: Any) -> None:
        layer = event.source
        if layer is self.image.value:
            self._take_image_scale(layer)
        if layer is self.psf_layer.value and self.psf_source.value == "layer":
            self._take_psf_layer_scale(layer)

    def _take_image_scale(self, layer: Image) -> None:
        scale = _scale_um(layer)
        self.voxel.set(scale)
        if self._spatial_ndim() == 3 and _z_scale_is_unset(layer):
            self._warn_unset_z_scale(layer.name, scale, self.voxel)

    def _on_psf_layer(self, layer: Image | None) -> None:
        # the picker moves when layers change (or to keep off the image) also while the PSF
        # comes from a file: that file's voxel size must not be replaced by a layer's
        if self.psf_source.value != "layer":
            return
        if layer is not None and layer is not self._psf_voxel_source:
            self._psf_voxel_source = layer
            self._follow_scale(layer)
            self._take_psf_layer_scale(layer)

    def _take_psf_layer_scale(self, layer: Image) -> None:
        scale = _scale_um(layer)
        # napari gives a layer added without a voxel size a scale of 1 on every axis. No
        # PSF is sampled at 1 µm, so such a layer is taken at the image's voxel size, as
        # a PSF file without voxel metadata is (and as the CLI takes one)
        self._show_psf_voxel(None if all(v == 1.0 for v in scale) else scale)
        # the picker holds the image itself while no other layer is open: that layer's
        # scale is the image's to warn about, and the PSF picker moves off it later. For
        # a 2D image the first axis of a 3D PSF layer is its channel, not z
        unset = _z_scale_is_unset(layer) and self._spatial_ndim() == 3
        if unset and layer is not self.image.value:
            self._warn_unset_z_scale(layer.name, scale, self.psf_voxel)

    def _warn_unset_z_scale(self, name: str, scale: Sequence[float], field: _VoxelEdit) -> None:
        """Say that a layer's z step is taken from a z scale napari may have set to 1.

        1 µm can be a real z step, so the value is kept; but napari gives an axis
        without a scale a scale of 1, and a PSF resampled from a wrong z step (or an
        image deconvolved with one) is wrong without any error, so the user is told
        which field to correct.
        """
        z, y, x = scale[-3:]
        show_warning(
            f"deconflow: the z step of {name!r} is taken as {z:g} µm from the layer's scale "
            f"(z {z:g}, y {y:g}, x {x:g}), but napari sets the scale of an axis without "
            "one to 1: the file may record its pixel size only. Type the z step into "
            f"{field.label} (z) if it is not {z:g} µm."
        )

    def _on_psf_source(self) -> None:
        # the PSF voxel size follows the source chosen, not the one looked at last
        if self.psf_source.value == "file":
            self._on_psf_file(self.psf_file.value)
        else:
            self._on_psf_layer(self.psf_layer.value)

    def _on_psf_file(self, path: Any) -> None:
        if self.psf_source.value != "file":  # _on_psf_source reads it when the source switches
            return
        if not str(path) or not str(path).lower().endswith((".tif", ".tiff")):
            return
        if str(path) == self._psf_voxel_source:
            return
        try:
            psf = read_tiff(str(path))
        except (OSError, ValueError) as exc:
            show_error(f"deconflow: cannot read the PSF file: {exc}")
            return
        self._psf_voxel_source = str(path)
        if psf.voxel_size_um is None and psf.pixel_size_um is not None:
            self._show_psf_pixel_size(psf.pixel_size_um, Path(str(path)).name)
            return
        # a file without voxel metadata is taken at the image's voxel size, as the CLI does;
        # keeping the sizes shown (the defaults or another PSF's) would resample it wrongly
        self._show_psf_voxel(psf.voxel_size_um)

    def _show_psf_pixel_size(self, pixel_size: tuple[float, float], name: str) -> None:
        """Show a PSF file's pixel size (y, x) with the z step in the field, and say so.

        An OME-TIFF may record PhysicalSizeY/X but no PhysicalSizeZ. The pixel size it
        records is the PSF's, whatever the image's; the z step is kept from the field:
        the image's (and following it) while the PSF voxel size was, else the one typed
        or loaded. The CLI asks for the z step instead; here the field always holds one,
        so a warning names the z step taken for the user to check.
        """
        z = self.psf_voxel.get(3)[0]
        with self.psf_voxel.changed.blocked():
            self.psf_voxel.set((z, *pixel_size))
        following = bool(self._psf_voxel_follows)
        self._psf_voxel_follows = "z" if following else ""
        y, x = pixel_size
        origin = "the image's" if following else "the one in the field"
        show_warning(
            f"deconflow: {name} records its pixel size (y {y:g} µm, x {x:g} µm) but no z "
            f"step; its z step is taken as {z:g} µm ({origin}). Type the bead stack's z step "
            "into PSF voxel z if it was taken with another one."
        )

    def _show_psf_voxel(self, sizes: Sequence[float] | None) -> None:
        """Show the PSF's own voxel size ``sizes``, or with ``None`` the image's from now on.

        The boxes' ``changed`` signal is blocked so that this is not taken for the user's
        typing, which ends the following of the image's voxel size.
        """
        with self.psf_voxel.changed.blocked():
            self.psf_voxel.set(self.voxel.get(3) if sizes is None else sizes)
        self._psf_voxel_follows = "zyx" if sizes is None else ""

    def _on_image_voxel(self) -> None:
        if self._psf_voxel_follows == "zyx":
            self._show_psf_voxel(None)
        elif self._psf_voxel_follows == "z":  # a PSF file's pixel size stays
            with self.psf_voxel.changed.blocked():
                self.psf_voxel.set(self.voxel.get(3)[:1])

    def _on_psf_voxel_typed(self) -> None:
        # a size the user typed is theirs: a later image (or its voxel size) must not replace it
        self._psf_voxel_follows = ""

    # -- settings -----------------------------------------------------------
    def _spatial_ndim(self) -> int:
        axes = self.axes.value.strip().upper()
        if not axes and self.image.value is not None:
            # an emptied field stands for the layer's own axes, as a run takes them (_job);
            # ZYX here gave a 2D image three voxel sizes and a message about those
            axes = axes_of_layer(self.image.value)
        return 2 if axes and not axes.endswith("ZYX") else 3

    def settings(self) -> DeconvolutionSettings:
        """Build the settings the form describes.

        Raises
        ------
        DeconflowError
            When a value is invalid (the message says which).
        """
        method = self.method.value
        ndim = self._spatial_ndim()
        try:
            options = self.method_options[method].values()
            common = self.common_options.values()
        except ValueError as exc:
            raise DeconflowError(str(exc)) from exc
        return DeconvolutionSettings.from_options(
            method,
            voxel_size=self.voxel.get(ndim),
            psf_voxel_size=self.psf_voxel.get(ndim),
            device=self.device.value,
            background="auto" if self.background_auto.value else self._background(),
            prepare_psf=bool(self.prepare_psf.value),
            **common,
            **options,
        )

    def _background(self) -> float:
        """Return the background typed; the settings check its range."""
        text = self.background.value.strip()
        try:
            return float(text.replace(",", "."))  # a decimal comma, as some locales type it
        except ValueError:
            raise DeconflowError(
                f"Background: cannot read {text!r}; give a number in the image's units (e.g. "
                "100, or 2e-7 for an image scaled to small values), or tick Estimate "
                "background."
            ) from None

    def set_settings(self, settings: DeconvolutionSettings) -> None:
        """Fill the form from ``settings`` (e.g. read with ``DeconvolutionSettings.from_yaml``)."""
        self.method.value = settings.method
        if settings.device not in self.device.choices:  # e.g. "cuda:1" from a YAML file
            self.device.choices = [*self.device.choices, settings.device]
        self.device.value = settings.device
        self.background_auto.value = settings.background is None
        # repr: the shortest text that reads back as the same float (2e-07, 0.0042, 100.0)
        self.background.value = repr(settings.background or 0.0)
        self.prepare_psf.value = settings.prepare_psf
        if settings.voxel_size_um is not None:
            self.voxel.set(settings.voxel_size_um)
        # the settings' PSF voxel size is the user's, not to be replaced by a later image's;
        # without one the PSF is at the image's and follows it, as the pipeline takes None
        if settings.psf_voxel_size_um is not None:
            self.psf_voxel.set(settings.psf_voxel_size_um)
        elif settings.voxel_size_um is not None:
            self._show_psf_voxel(None)
        self.common_options.set_values(settings)
        # every method's section, not only the chosen one: switching method afterwards shows
        # the file's values for that method, not whatever the form held before
        for method, options in self.method_options.items():
            options.set_values(getattr(settings, METHODS[method]))

    # -- running ------------------------------------------------------------
    def _job(self, preview: bool) -> Job:
        layer = self.image.value
        if layer is None:
            raise DeconflowError("Choose an image layer to deconvolve.")
        if layer.rgb:  # its colour axis is not in layer.ndim: the axes and crop would not fit
            raise DeconflowError(
                f"Layer {layer.name!r} is an RGB picture, not a fluorescence stack. "
                "Deconvolve the raw single-channel data, or split the colours into layers "
                "(right-click the layer > Split RGB) and deconvolve each."
            )
        axes = self.axes.value.strip().upper() or axes_of_layer(layer)
        leading, spatial = split_axes(axes, layer.ndim)
        settings = self.settings()
        psf: Any = None
        path: str | None = None
        if self.psf_source.value == "file":
            path = str(self.psf_file.value)
            if not path.lower().endswith((".tif", ".tiff")):
                raise DeconflowError("Choose a PSF TIFF file, or take the PSF from a layer.")
        elif self.psf_layer.value is None:
            raise DeconflowError("Choose a PSF layer (or load the PSF from a file).")
        elif self.psf_layer.value is layer:
            # the picker holds the image itself while no other layer is open; a stack is
            # never its own PSF, and the run would go through without any error
            raise DeconflowError(
                f"The PSF layer is the image {layer.name!r} itself. Open the PSF (a bead "
                "stack or a computed PSF) as a layer and choose it, or set PSF from to file."
            )
        else:
            psf = self.psf_layer.value.data
        data = _full_resolution(layer)  # an OME-Zarr pyramid is deconvolved at level 0
        if not preview:
            placement = Placement.of_layer(layer)
            return Job(data, axes, psf, path, settings, layer.name, placement)
        # preview: the current T/C index and a small box around the view's centre
        centre = self._view_centre(layer)
        shape = data.shape
        index = tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, shape, strict=True))
        size = ([self.preview_planes.value] if len(spatial) == 3 else []) + [
            self.preview_size.value
        ] * 2
        box = crop_around(shape[len(leading) :], centre[len(leading) :], size)
        channel = index[leading.index("C")] if "C" in leading else None
        offset = [s.start for s in box]
        n = len(leading)
        return Job(
            image=data[index[:n] + box],
            axes=spatial,
            psf=psf,
            psf_path=path,
            settings=settings,
            source=layer.name,
            placement=Placement.of_layer(layer, n, offset),
            preview=True,
            psf_channel=channel,
        )

    def _view_centre(self, layer: Image) -> list[float]:
        """Return the data coordinates of the current slice at the centre of the view."""
        point = list(self._viewer.dims.point)
        displayed = list(self._viewer.dims.displayed)
        # napari 0.9 moved the camera to viewer.scene; older versions have viewer.camera
        scene = getattr(self._viewer, "scene", None)
        camera = scene.camera if scene is not None else self._viewer.camera
        for axis, value in zip(displayed[-2:], camera.center[-2:], strict=True):
            point[axis] = value
        return [float(c) for c in layer.world_to_data(point)]

    def run(self, preview: bool = False) -> GeneratorWorker | None:
        """Start a run (or a preview) in a worker thread.

        Parameters
        ----------
        preview : bool
            Run on a small region around the current slice instead of the
            whole image.

        Returns
        -------
        GeneratorWorker or None
            The started worker, or ``None`` when the form was invalid (an error
            notification says why) or a run is already going.
        """
        if self.worker is not None:
            return None
        try:
            job = self._job(preview)
        except (DeconflowError, ValueError) as exc:
            self._fail(exc)
            return None
        volumes = int(np.prod(np.shape(job.image)[: len(job.axes) - self._spatial_ndim()]))
        self.progress.max = max(1, job.settings.solver.total_steps * volumes)
        self.progress.value = 0
        worker = create_worker(run_events, job, _start_thread=False)
        self._slots = [
            (worker.yielded, self._on_progress),
            (worker.returned, partial(self._on_result, job)),
            (worker.errored, self._fail),
            (worker.aborted, self._on_aborted),
            (worker.finished, self._on_finished),
        ]
        for signal, slot in self._slots:
            signal.connect(slot)
        self.worker = worker
        self._set_running(True)
        self.status.value = "preview…" if preview else "starting…"
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running worker after its current step; the viewer is left as it was."""
        if self.worker is not None:
            self.status.value = "cancelling…"
            self.worker.quit()

    def _on_destroyed(self) -> None:
        """Stop the running worker and detach it: the form's Qt widgets are being deleted.

        Closing the viewer deletes them while a run may go on; each later progress event
        would raise on a deleted widget (outside napari's event loop, e.g. in IPython,
        that aborts the Python process) and the result would go to a closed viewer.
        """
        if self.worker is None:
            return
        for signal, slot in self._slots:
            signal.disconnect(slot)
        self._slots = []
        self.worker.quit()
        self.worker = None

    def _on_aborted(self) -> None:
        self.status.value = "cancelled"

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.preview_button.enabled = not running
        self.cancel_button.enabled = running

    def _on_progress(self, event: Progress) -> None:
        # the bar runs over the steps of the current stage, all tiles and all volumes
        tiles = getattr(event, "tiles", 1)
        if event.total > 1 or event.step > 0:
            per_volume = event.total * tiles
            self.progress.max = max(1, per_volume * event.volumes)
            done = getattr(event, "tile", 0) * event.total + event.step
            self.progress.value = event.volume * per_volume + done
        where = f"volume {event.volume + 1}/{event.volumes}: " if event.volumes > 1 else ""
        if tiles > 1:
            where += f"tile {getattr(event, 'tile', 0) + 1}/{tiles}: "
        self.status.value = where + event.message

    def _on_result(self, job: Job, result: Result | HyperstackResult | Failure) -> None:
        if isinstance(result, Failure):
            self._fail(result.error)
            return
        layer = show_result(self._viewer, job, result)
        self.cancel_button.enabled = False  # the result is in: nothing is left to cancel
        self.progress.value = self.progress.max
        self.status.value = f"done in {result.elapsed_s:.1f} s → {layer.name}"

    def _fail(self, exc: BaseException) -> None:
        # deconflow's own messages say what to fix; others need their type to be understood
        text = str(exc) if isinstance(exc, DeconflowError) else f"{type(exc).__name__}: {exc}"
        self.status.value = "failed"
        show_error(f"deconflow: {text}")

    def _on_finished(self) -> None:
        if self.status.value == "cancelling…":
            # cancelled after the last step: the worker drops the result but emits no
            # "aborted" either, as it only checks for a cancel before each step
            self.status.value = "cancelled"
        self.worker = None
        self._slots = []  # the result's slot holds the job, and with it the image
        self._set_running(False)
