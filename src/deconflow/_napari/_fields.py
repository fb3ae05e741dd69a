"""Option widgets built from a method's settings dataclass.

The widget never lists a method's options by hand: each field of the method's
section of :class:`deconflow.DeconvolutionSettings` (a solver dataclass) becomes
one widget, chosen by the field's type, so a new method or option shows up in
the dock widget as soon as it exists in the settings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeAlias

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    SpinBox,
)

from deconflow.config import METHODS, DeconvolutionSettings

__all__ = ["MethodOptions", "Options", "method_label", "method_section", "set_option"]

#: The widgets an option can get; each has a ``value``.
OptionWidget: TypeAlias = "CheckBox | SpinBox | FloatSpinBox | FileEdit | LineEdit"

#: Display names of the methods known today; other methods show their own name.
_METHOD_LABELS = {
    "flow": "Flow (generative prior)",
    "rl": "Richardson–Lucy",
    "rl-tv": "Richardson–Lucy + TV",
    "wiener": "Wiener",
}
#: Words spelled out or capitalised in labels built from field names.
_WORDS = {"tv": "TV", "um": "(µm)", "nm": "(nm)", "gb": "(GB)", "psf": "PSF", "cg": "CG"}
#: Options a user tunes first, shown outside the advanced section when a method has them:
#: the issue's main knobs (steps, samples, prior strength, noise model, weights file). A
#: field's ``metadata={"advanced": bool}`` overrides this; methods without any of these
#: names fall back to a rule by type.
_MAIN_KNOBS = frozenset(
    {
        "iterations",
        "steps",
        "samples",
        "tv_weight",
        "regularization",
        "prior_weight",
        "prior_strength",
        "weights",
        "gain",
        "camera_offset",
        "read_sigma",
    }
)
#: Text that stands for ``None`` ("estimate it") in optional fields.
AUTO = "auto"


def method_label(method: str) -> str:
    """Human-readable name of ``method``."""
    return _METHOD_LABELS.get(method, method)


def method_section(method: str) -> type:
    """Return the settings dataclass holding ``method``'s options."""
    hints = typing.get_type_hints(DeconvolutionSettings)
    return typing.cast(type, hints[METHODS[method]])


def _label(name: str) -> str:
    words = [_WORDS.get(w, w) for w in name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``(inner, True)`` for ``X | None``, else ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(annotation)):
            return args[0], True
    return annotation, False


def _is_path(name: str, annotation: Any) -> bool:
    return annotation is Path or (
        annotation is str and any(w in name for w in ("path", "file", "weights"))
    )


def _make_widget(
    field: dataclasses.Field[Any], annotation: Any, by_name: bool
) -> tuple[OptionWidget, bool]:
    """Widget for one field and whether it belongs in the advanced section.

    With ``by_name`` the main section holds the fields named in ``_MAIN_KNOBS``;
    otherwise numbers and files are main and switches and tuples advanced. A
    field may override this with ``metadata={"advanced": bool}`` and set its
    label with ``metadata={"label": ...}``.
    """
    inner, optional = _unwrap_optional(annotation)
    default: Any = field.default if field.default is not dataclasses.MISSING else None
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    label = field.metadata.get("label", _label(field.name))
    tooltip = field.metadata.get("help")
    widget: OptionWidget
    if inner is bool:
        widget = CheckBox(value=bool(default), label=label, tooltip=tooltip)
        advanced = True
    elif inner is int and not optional:
        # from 0: the settings validate the range (Wiener's iterations=0 is its one-shot
        # filter), and their message says what is allowed
        widget = SpinBox(value=default, min=0, max=100_000, label=label, tooltip=tooltip)
        advanced = False
    elif inner is float and not optional:
        # spin boxes round to their decimals: small weights (0.002) need many
        widget = FloatSpinBox(
            value=default, min=0.0, max=1e6, step=10 ** _magnitude(default), label=label
        )
        widget.native.setDecimals(6)
        widget.tooltip = tooltip
        advanced = False
    elif _is_path(field.name, inner):
        widget = FileEdit(
            mode=FileDialogMode.EXISTING_FILE,
            value=Path(default) if default else None,
            label=label,
            tooltip=tooltip,
        )
        advanced = False
    else:
        # optional numbers and tuples: free text, "auto" for None (estimated by the solver)
        text = AUTO if default is None else _to_text(default)
        widget = LineEdit(value=text, label=label, tooltip=tooltip or f"'{AUTO}' to estimate")
        advanced = typing.get_origin(inner) is tuple
    if by_name:
        advanced = field.name not in _MAIN_KNOBS
    return widget, bool(field.metadata.get("advanced", advanced))


def _magnitude(value: float | None) -> int:
    if not value:
        return -2
    exponent = 0
    while abs(value) < 10**exponent and exponent > -8:
        exponent -= 1
    return exponent


def _to_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _parse(text: str, annotation: Any) -> Any:
    """Text of a free-text field -> value; errors are ValueError.

    ``"auto"``/empty stands for ``None`` only in optional fields: in a plain text
    option (``precision``, ``sampler``) ``"auto"`` is a value of its own.
    """
    inner, optional = _unwrap_optional(annotation)
    text = text.strip()
    if optional and text.lower() in (AUTO, "", "none"):
        return None
    if typing.get_origin(inner) is tuple:
        (item,) = {a for a in typing.get_args(inner) if a is not Ellipsis}
        convert = int if item is int else float
        return tuple(convert(v) for v in text.replace(",", " ").split())
    if inner is int:
        return int(text)
    if inner is float:
        return float(text)
    return text


def set_option(widget: OptionWidget, value: Any) -> None:
    """Show ``value`` (a settings value) in ``widget``; ``None`` reads ``auto`` or no file."""
    if isinstance(widget, LineEdit):
        widget.value = AUTO if value is None else _to_text(value)
    elif isinstance(widget, FileEdit):
        if value is None:
            widget.line_edit.value = ""  # FileEdit.value = "" would give the working folder
        else:
            widget.value = Path(value)
    elif value is not None:
        widget.value = value


class Options:
    """Option widgets for fields of a settings dataclass: a main and an advanced container.

    Parameters
    ----------
    section : type
        The dataclass.
    names : collection of str, optional
        The fields to show (default: every ``init`` field).
    """

    def __init__(self, section: type, names: Collection[str] | None = None) -> None:
        hints = typing.get_type_hints(section)
        self._annotations: dict[str, Any] = {}
        self.widgets: dict[str, OptionWidget] = {}
        main: list[OptionWidget] = []
        advanced: list[OptionWidget] = []
        fields = [
            f for f in dataclasses.fields(section) if f.init and (names is None or f.name in names)
        ]
        by_name = any(f.name in _MAIN_KNOBS for f in fields)
        for field in fields:
            widget, is_advanced = _make_widget(field, hints[field.name], by_name)
            self._annotations[field.name] = hints[field.name]
            self.widgets[field.name] = widget
            (advanced if is_advanced else main).append(widget)
        self.main = Container(widgets=main, labels=True)
        self.advanced = Container(widgets=advanced, labels=True)

    def __getitem__(self, name: str) -> OptionWidget:
        """Return the widget of option ``name``."""
        return self.widgets[name]

    def values(self) -> dict[str, Any]:
        """Option values as keyword arguments of the settings (``None``: estimate / none).

        Raises
        ------
        ValueError
            When a free-text field does not parse.
        """
        values: dict[str, Any] = {}
        for name, widget in self.widgets.items():
            value = widget.value
            if isinstance(widget, LineEdit):
                try:
                    value = _parse(widget.value, self._annotations[name])
                except ValueError as exc:
                    raise ValueError(f"{widget.label}: cannot read {widget.value!r}.") from exc
            elif isinstance(widget, FileEdit):
                value = str(value) if str(value) not in ("", ".") else None
            values[name] = value
        return values

    def set_values(self, settings: Any) -> None:
        """Fill every widget from the matching attribute of ``settings``."""
        for name, widget in self.widgets.items():
            set_option(widget, getattr(settings, name))

    def set_visible(self, visible: bool, advanced: bool) -> None:
        """Show the main options (and the advanced ones when ``advanced``)."""
        self.main.visible = visible
        self.advanced.visible = visible and advanced


class MethodOptions(Options):
    """The option widgets of one method: a main and an advanced container.

    Parameters
    ----------
    method : str
        A key of :data:`deconflow.config.METHODS`.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        super().__init__(method_section(method))
