"""Settings for command-line runs: ``--config`` plus flag overrides, and a commented default.

Everything here is derived from :class:`deconflow.config.DeconvolutionSettings`
(its fields, defaults and numpydoc docstrings), so the YAML that
``deconflow batch --write-config`` prints cannot drift from the schema.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
from pathlib import Path
from typing import Any

import yaml

from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow.config import METHODS, DeconvolutionSettings, _SettingsDumper

__all__ = ["build_settings", "commented_yaml", "resolve_voxel_sizes", "settings_from_args"]


def settings_from_args(args: argparse.Namespace) -> DeconvolutionSettings:
    """Build the settings from a command's ``--config`` and override flags."""
    return build_settings(
        args.config,
        method=args.method,
        device=args.device,
        iterations=args.iterations,
        background=args.background,
    )


def build_settings(
    config: Path | None = None,
    *,
    method: str | None = None,
    device: str | None = None,
    iterations: int | None = None,
    background: str | None = None,
) -> DeconvolutionSettings:
    """Build settings from a YAML file (or the defaults) with command-line flags on top.

    Parameters
    ----------
    config : pathlib.Path, optional
        Settings YAML (the schema of :meth:`DeconvolutionSettings.to_yaml`).
    method, device : str, optional
        Override the file's method / device.
    iterations : int, optional
        Iterations of the chosen method's solver.
    background : str, optional
        A number in the image's units, or ``"auto"`` to estimate it.

    Returns
    -------
    DeconvolutionSettings
        Validated settings.

    Raises
    ------
    DeconflowError
        For a missing or invalid file or value.
    """
    if config is not None:
        if not config.is_file():
            raise DeconflowError(
                f"Settings file {config} not found; write one with "
                "'deconflow batch --write-config > settings.yaml'."
            )
        text = config.read_text(encoding="utf-8")
        try:
            base = DeconvolutionSettings.from_yaml(text)
        except DeconflowError:
            if _is_record(text):
                raise DeconflowError(
                    f"{config} is the provenance record of a deconflow output, not a settings "
                    "file; copy its 'settings' section into a YAML file (its voxel sizes are "
                    "that output's: set them to null to read each file's), or start from "
                    "'deconflow batch --write-config > settings.yaml'."
                ) from None
            raise
    else:
        base = DeconvolutionSettings()
    changes: dict[str, Any] = {}
    if method is not None:
        changes["method"] = method
    if device is not None:
        changes["device"] = device
    if background is not None:
        if background.strip().lower() == "auto":
            changes["background"] = None
        else:
            try:
                changes["background"] = float(background)
            except ValueError:
                raise DeconflowError(
                    f"--background must be a number or 'auto', got {background!r}."
                ) from None
    settings = dataclasses.replace(base, **changes)
    if iterations is not None:
        section = METHODS[settings.method]
        current = getattr(settings, section)
        # flow counts sampler steps, not iterations: dataclasses.replace would raise a raw
        # TypeError that reaches the user as an "unexpected error"
        if "iterations" not in {f.name for f in dataclasses.fields(current)}:
            raise DeconflowError(
                f"--iterations does not apply to method {settings.method!r}; set its options "
                f"(e.g. {section}.steps) in a --config file "
                "(deconflow batch --write-config prints one)."
            )
        solver = dataclasses.replace(current, iterations=iterations)
        settings = dataclasses.replace(settings, **{section: solver})
    weights = settings.flow.weights
    if weights:
        # a Dask worker runs in its own folder (and maybe as another user): a relative or
        # ~ path would name another file there, or none. abspath, not resolve: a symlinked
        # weights folder keeps the name the user gave
        absolute = os.path.abspath(os.path.expanduser(weights))
        if absolute != weights:
            flow = dataclasses.replace(settings.flow, weights=absolute)
            settings = dataclasses.replace(settings, flow=flow)
    return settings


def _is_record(text: str) -> bool:
    """Whether ``text`` is an output's JSON record (settings under ``"settings"``)."""
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(mapping, dict) and {"resume_key", "settings"} <= mapping.keys()


def resolve_voxel_sizes(
    settings: DeconvolutionSettings,
    *,
    flag: VoxelSize | None,
    psf_flag: VoxelSize | None,
    from_image: VoxelSize | None,
    from_psf: VoxelSize | None,
) -> DeconvolutionSettings:
    """Settle the voxel sizes for one file: flag, else settings file, else file metadata.

    A PSF voxel size read from the PSF file is dropped when the image has none (the PSF
    is then taken at the image's grid); one the user gave is refused in that case, as
    the library refuses it, rather than silently ignored.

    Raises
    ------
    DeconflowError
        If the user gave a PSF voxel size but the image's is unknown.
    """
    voxel = flag or settings.voxel_size_um or from_image
    given_psf_voxel = psf_flag or settings.psf_voxel_size_um
    psf_voxel = given_psf_voxel or from_psf
    if voxel is None:
        if given_psf_voxel is not None:
            raise DeconflowError(
                "A PSF voxel size was given (--psf-voxel-size or psf_voxel_size_um) but the "
                "image's voxel size is unknown (its file records none); give --voxel-size too "
                "so that the PSF can be resampled to it."
            )
        psf_voxel = None
    return dataclasses.replace(
        settings,
        voxel_size_um=None if voxel is None else tuple(float(v) for v in voxel),
        psf_voxel_size_um=None if psf_voxel is None else tuple(float(v) for v in psf_voxel),
    )


_DOC_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w, ]*?)\s*(?::.*)?$")


def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> one-line description, from a numpydoc Attributes/Parameters section."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    in_section = False
    current: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for name in current:
            docs[name] = " ".join(text).strip()

    for i, line in enumerate(lines):
        if line.strip() in ("Attributes", "Parameters") and i + 1 < len(lines):
            in_section = lines[i + 1].strip().startswith("---")
            continue
        if not in_section or line.strip().startswith("---"):
            continue
        if line and not line.startswith(" "):
            match = _DOC_ENTRY.match(line)
            if match is None:  # a new section header ends the list
                flush()
                current, text, in_section = [], [], False
                continue
            flush()
            current = [n.strip() for n in match["names"].split(",")]
            text = []
        elif line.strip():
            text.append(line.strip())
    flush()
    return docs


def _yaml_value(value: Any) -> str:
    # dumping inside a one-item flow list gives the inline form ("null", "[0.3, 0.1, 0.1]")
    # the settings' dumper: text such as "1e5" is quoted, as the settings loader needs
    text = yaml.dump([value], Dumper=_SettingsDumper, default_flow_style=True, allow_unicode=True)
    return text.strip()[1:-1]


#: A Sphinx cross-reference in a docstring, ``:role:`~module.Name``` (the name captured).
_CROSS_REFERENCE = re.compile(r":(?:func|class|meth|mod|attr|data|obj):`~?([^`]+)`")


def _comment(text: str, indent: str) -> list[str]:
    # the docstrings speak Python; the file is YAML
    for python, plain in (("``None``", "null"), ("``True``", "true"), ("``False``", "false")):
        text = text.replace(python, plain)
    text = text.replace("``", "")
    # a cross-reference (":class:`~deconflow.solvers.stopping.CrossValidatedStop`") becomes
    # the name it points to: the role markup meant nothing to a reader of the file
    text = _CROSS_REFERENCE.sub(lambda match: match.group(1).rsplit(".", 1)[-1], text)
    # keep comment lines short enough to read in a terminal
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) > 86:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return [f"{indent}# {piece}" for piece in lines]


def commented_yaml(settings: DeconvolutionSettings | None = None) -> str:
    """YAML of ``settings`` (default: the defaults) with each field's docstring as a comment.

    The text parses back to the same settings with
    :meth:`DeconvolutionSettings.from_yaml`.
    """
    settings = settings or DeconvolutionSettings()
    values = settings.to_dict()
    top_docs = _field_docs(DeconvolutionSettings)
    out = [
        "# deconflow deconvolution settings "
        f"(schema version {settings.schema_version}), for --config.",
        "# Command-line flags override these values. null voxel sizes are read from each",
        "# file's metadata, and a z step alone ([Z]) takes y and x from it; only the section",
        "# of the chosen method is used.",
    ]
    for field in dataclasses.fields(DeconvolutionSettings):
        if not field.init:
            continue
        value = values[field.name]
        out.append("")
        section_cls = DeconvolutionSettings._SECTIONS.get(field.name)
        if section_cls is None:
            out.extend(_comment(top_docs.get(field.name, ""), ""))
            out.append(f"{field.name}: {_yaml_value(value)}")
            continue
        methods = [m for m, s in METHODS.items() if s == field.name]
        out.append(f"# options of method {', '.join(repr(m) for m in methods)}")
        out.append(f"{field.name}:")
        section_docs = _field_docs(section_cls)
        for key, item in value.items():
            out.extend(_comment(section_docs.get(key, ""), "  "))
            out.append(f"  {key}: {_yaml_value(item)}")
    return "\n".join(out) + "\n"
