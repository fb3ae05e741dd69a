"""Typed, validated deconvolution settings: one schema for the API, the CLI, the widget and YAML.

The per-method sections *are* the solver dataclasses (``RichardsonLucy``,
``RichardsonLucyTV``, ``Wiener``): their fields are the options, validated when
they are built, so the settings and the solvers cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import yaml

from deconflow._device import check_device_name
from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow._validate import check_name
from deconflow.solvers import RichardsonLucy, RichardsonLucyTV, Wiener
from deconflow.solvers.flow import FlowDeconvolution

__all__ = ["METHODS", "DeconvolutionSettings"]

#: Method name -> settings section (attribute of DeconvolutionSettings) holding its options.
METHODS: dict[str, str] = {"flow": "flow", "rl": "rl", "rl-tv": "rl_tv", "wiener": "wiener"}
#: Other names for the methods, used to suggest the right one.
METHOD_ALIASES: dict[str, str] = {
    "richardson-lucy": "rl",
    "lucy-richardson": "rl",
    "richardsonlucy": "rl",
    "rltv": "rl-tv",
    "richardson-lucy-tv": "rl-tv",
    "tv": "rl-tv",
    "tikhonov": "wiener",
    "wiener-tikhonov": "wiener",
}
#: Options that apply to every method.
_COMMON_OPTIONS = ("background", "prepare_psf", "tile_shape", "memory_budget_gb")
SCHEMA_VERSION = 1


class _SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``1e-3`` as a number, as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``); a hand-written
    ``tv_weight: 1e-3`` would otherwise arrive as the string ``'1e-3'``.
    """


class _SettingsDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes text the loader would read as a number (``'1e5'``)."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
for _yaml_class in (_SettingsLoader, _SettingsDumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789")
    )


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check ``value`` against a simple annotation (int, float, bool, str, tuple, Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name)
            except DeconflowError as exc:
                errors.append(str(exc))
        raise DeconflowError(errors[0] if errors else f"{name}: invalid value {value!r}.")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise DeconflowError(f"{name} must be a list of numbers, got {value!r}.")
        (item,) = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        return tuple(_coerce(v, item, name) for v in value)
    # numpy scalars (np.int64 from a shape, np.float32 from an array's mean) count as numbers
    is_bool = isinstance(value, bool | np.bool_)
    if annotation is bool:
        if not is_bool:
            raise DeconflowError(f"{name} must be true or false, got {value!r}.")
        return bool(value)
    if annotation is int:
        if is_bool or not isinstance(value, numbers.Integral):
            raise DeconflowError(f"{name} must be an integer, got {value!r}.")
        return int(value)
    if annotation is float:
        if is_bool or not isinstance(value, numbers.Real):
            raise DeconflowError(f"{name} must be a number, got {value!r}.")
        return float(value)
    if annotation is str:
        if isinstance(value, os.PathLike):  # a pathlib.Path for the weights file
            return str(os.fspath(value))
        if not isinstance(value, str):
            raise DeconflowError(f"{name} must be a string, got {value!r}.")
        return value
    return value


def _voxel_size(value: Any, name: str) -> VoxelSize | None:
    """Return a keyword voxel size (``(z, y, x)`` numbers) as a tuple of floats, or None."""
    if value is None:
        return None
    try:
        if isinstance(value, str | bytes):
            raise TypeError
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise DeconflowError(
            f"{name} must be a sequence of numbers in micrometres ordered (z, y, x), or (y, x) "
            f"for a 2D image, e.g. {name}=(0.3, 0.1, 0.1); got {value!r}."
        ) from None


def _build(cls: type, mapping: dict[str, Any], where: str) -> Any:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    values = {}
    for key, value in mapping.items():
        check_name(f"setting in {where}", key, names)
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**values)
    except DeconflowError as exc:
        # the solver's own check names the option, not the section: in a settings file
        # "iterations must be >= 0" could be any of three
        raise DeconflowError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class DeconvolutionSettings:
    """Everything that determines a deconvolution result, except the data.

    Attributes
    ----------
    method : str
        ``"rl"`` (Richardson–Lucy, default), ``"rl-tv"``, ``"wiener"`` or ``"flow"``.
    voxel_size_um : tuple of float or None
        Image voxel size (z, y, x) or (y, x) in micrometres. Where the image is
        a file (the ``deconflow`` command and its settings files) also ``(z,)``:
        the z step alone, completed with each file's pixel size (y, x). An array
        has no pixel size, so ``deconflow.deconvolve`` needs all three.
    psf_voxel_size_um : tuple of float or None
        PSF voxel size, also ``(z,)`` for a PSF file; ``None`` means the same as
        the image's.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    background : float or None
        Constant background (camera offset + haze) in the image's units;
        ``None`` estimates it from the image.
    prepare_psf : bool
        Treat the PSF as a raw bead stack: subtract its background, centre,
        crop and normalise it (harmless for an already clean PSF).
    tile_shape : tuple of int or None
        Largest tile (z, y, x) in voxels; ``None`` tiles only when the stack
        would not fit the memory budget.
    memory_budget_gb : float or None
        Memory a run may use; ``None`` means 50 % of the available RAM on the
        CPU, 80 % of the free GPU memory on CUDA.
    rl, rl_tv, wiener, flow
        Options of each method (the solver dataclasses).
    """

    method: str = "rl"
    voxel_size_um: VoxelSize | None = None
    psf_voxel_size_um: VoxelSize | None = None
    device: str = "auto"
    background: float | None = None
    prepare_psf: bool = True
    tile_shape: tuple[int, ...] | None = None
    memory_budget_gb: float | None = None
    rl: RichardsonLucy = field(default_factory=RichardsonLucy)
    rl_tv: RichardsonLucyTV = field(default_factory=RichardsonLucyTV)
    wiener: Wiener = field(default_factory=Wiener)
    flow: FlowDeconvolution = field(default_factory=FlowDeconvolution)
    schema_version: int = SCHEMA_VERSION

    _SECTIONS: ClassVar[dict[str, type]] = {
        "rl": RichardsonLucy,
        "rl_tv": RichardsonLucyTV,
        "wiener": Wiener,
        "flow": FlowDeconvolution,
    }

    def __post_init__(self) -> None:
        # a list or array (a file's voxel size, a shape) is kept as the tuple the fields
        # promise: kept as given, it made settings unhashable and unequal to the same
        # settings with a tuple, or read back from YAML (an array: equality raised)
        for name in ("voxel_size_um", "psf_voxel_size_um"):
            object.__setattr__(self, name, _voxel_size(getattr(self, name), name))
        if self.tile_shape is not None:
            object.__setattr__(self, "tile_shape", tuple(self.tile_shape))
        check_name("method", self.method, METHODS, METHOD_ALIASES)
        check_device_name(self.device)
        if self.background is not None and not 0 <= self.background < np.inf:
            raise DeconflowError(
                f"background must be a finite number >= 0 in the image's units (or None to "
                f"estimate it), got {self.background}."
            )
        if self.schema_version != SCHEMA_VERSION:
            raise DeconflowError(
                f"Settings schema version {self.schema_version} is not supported by this "
                f"deconflow (it reads version {SCHEMA_VERSION}); upgrade deconflow or write "
                "the settings again."
            )
        if self.tile_shape is not None and any(t < 8 for t in self.tile_shape):
            raise DeconflowError(
                f"tile_shape must be at least 8 voxels per axis, got {self.tile_shape}."
            )
        if self.memory_budget_gb is not None and not 0 < self.memory_budget_gb < np.inf:
            raise DeconflowError(
                f"memory_budget_gb must be a finite number > 0 (or None for automatic), got "
                f"{self.memory_budget_gb}."
            )
        for name in ("voxel_size_um", "psf_voxel_size_um"):
            value = getattr(self, name)
            if value is not None and any(not 0 < v < np.inf for v in value):
                raise DeconflowError(f"{name} must be finite, positive micrometres, got {value}.")
        # a z step alone, (z,), is completed from each file's pixel size: any length fits
        if (
            self.voxel_size_um is not None
            and self.psf_voxel_size_um is not None
            and 1 not in (len(self.voxel_size_um), len(self.psf_voxel_size_um))
            and len(self.voxel_size_um) != len(self.psf_voxel_size_um)
        ):
            raise DeconflowError(
                f"voxel_size_um {self.voxel_size_um} and psf_voxel_size_um "
                f"{self.psf_voxel_size_um} have different lengths; give both as (z, y, x)."
            )

    @property
    def solver(self) -> RichardsonLucy | RichardsonLucyTV | Wiener | FlowDeconvolution:
        """The options (solver) of the chosen method."""
        solver: RichardsonLucy | RichardsonLucyTV | Wiener | FlowDeconvolution = getattr(
            self, METHODS[self.method]
        )
        return solver

    @classmethod
    def from_options(
        cls,
        method: str = "rl",
        *,
        voxel_size: VoxelSize | None = None,
        psf_voxel_size: VoxelSize | None = None,
        device: str = "auto",
        **options: Any,
    ) -> DeconvolutionSettings:
        """Build settings from the flat keyword options that :func:`deconflow.deconvolve` takes.

        Raises
        ------
        DeconflowError
            For an unknown method or option; the message names the closest
            valid option, or the method an option belongs to.
        """
        check_name("method", method, METHODS, METHOD_ALIASES)
        section = METHODS[method]
        section_cls = cls._SECTIONS[section]
        own = [f.name for f in dataclasses.fields(section_cls) if f.init]
        common: dict[str, Any] = {}
        method_options: dict[str, Any] = {}
        for key, value in options.items():
            if key in _COMMON_OPTIONS:
                common[key] = value
            elif key in own:
                method_options[key] = value
            else:
                owners = [
                    m
                    for m, s in METHODS.items()
                    if key in {f.name for f in dataclasses.fields(cls._SECTIONS[s])}
                ]
                if owners:
                    raise DeconflowError(
                        f"Option {key!r} does not apply to method {method!r}; it belongs to "
                        f"{' and '.join(repr(o) for o in owners)}."
                    )
                check_name(f"option for method {method!r}", key, [*own, *_COMMON_OPTIONS])
        if common.get("background") == "auto":
            common["background"] = None
        hints = _field_types(cls)
        checked = {k: _coerce(v, hints[k], k) for k, v in common.items()}
        return cls(
            method=method,
            voxel_size_um=_voxel_size(voxel_size, "voxel_size"),
            psf_voxel_size_um=_voxel_size(psf_voxel_size, "psf_voxel_size"),
            device=str(device),
            **checked,
            **{section: _build(section_cls, method_options, section)},
        )

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples), suitable for YAML or JSON."""

        def plain(value: Any) -> Any:
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, np.generic):  # np.float32(...) given to the constructor
                return value.item()
            return value

        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> DeconvolutionSettings:
        """Build settings from :meth:`to_dict`'s output, validating every value."""
        if not isinstance(mapping, dict):
            raise DeconflowError(f"Settings must be a mapping, got {type(mapping).__name__}.")
        hints = _field_types(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            check_name("setting", key, names)
            if key == "background" and isinstance(value, str) and value.strip() == "auto":
                # what --background and deconvolve(background=...) take: estimate it
                value = None
            if key in cls._SECTIONS:
                if not isinstance(value, dict):
                    raise DeconflowError(f"Settings section {key!r} must be a mapping.")
                values[key] = _build(cls._SECTIONS[key], value, key)
            else:
                values[key] = _coerce(value, hints[key], key)
        return cls(**values)

    def to_yaml(self) -> str:
        """YAML text of the settings, with a header naming the schema."""
        header = (
            "# deconflow deconvolution settings (schema version "
            f"{SCHEMA_VERSION}); null means 'estimate from the data'\n"
        )
        return header + yaml.dump(self.to_dict(), Dumper=_SettingsDumper, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> DeconvolutionSettings:
        """Parse :meth:`to_yaml`'s output (or a hand-written subset of it)."""
        try:
            mapping = yaml.load(text, Loader=_SettingsLoader)
        except yaml.YAMLError as exc:
            raise DeconflowError(f"Settings are not valid YAML: {exc}") from exc
        return cls.from_dict(mapping or {})
