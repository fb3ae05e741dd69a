"""Which files a batch reads and writes: input expansion, output names, hashes, leftovers."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from deconflow._errors import DeconflowError
from deconflow.io._atomic import partial_prefix

__all__ = [
    "OUTPUT_SUFFIX",
    "PARTIAL_MARK",
    "expand_inputs",
    "output_for",
    "record_for",
    "remove_partials",
    "sha256_file",
]

OUTPUT_SUFFIX = "_deconvolved.ome.tif"
#: Part of the temporary names :func:`deconflow.io._atomic.atomic_destination` uses.
PARTIAL_MARK = ".partial"
_TIFF_SUFFIXES = (".tif", ".tiff")
_CHUNK = 1 << 22


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in _TIFF_SUFFIXES and not path.name.startswith(".")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _glob_root(pattern: str) -> Path:
    """Return the folder a glob starts from: its leading components without wildcards."""
    literal: list[str] = []
    for part in Path(pattern).parts:
        if any(char in part for char in "*?["):
            break
        literal.append(part)
    return Path(*literal)


def expand_inputs(
    inputs: Sequence[str], out_dir: Path, exclude: Sequence[Path] = ()
) -> list[tuple[Path, Path]]:
    """Turn files, folders and globs into ``(input, output)`` pairs, sorted by input.

    Folders contribute their ``*.tif``/``*.tiff`` files (not recursively; use a
    ``**`` glob for that). A glob's matches keep their sub-folders below the
    glob's first wildcard under ``out_dir`` (``data/**/*.tif`` writes
    ``data/day1/cell.tif`` as ``out_dir/day1/cell_deconvolved.ome.tif``), so
    files of the same name in different folders do not collide. Anything
    inside ``out_dir`` and the ``exclude`` files (the PSFs) are left out, so a
    re-run never treats earlier outputs or beads as inputs.

    Raises
    ------
    DeconflowError
        When an input matches nothing, nothing is left to process (every
        input is inside ``out_dir``, say), or two inputs would write the same
        output.
    """
    out_dir = out_dir.resolve()
    skip = {p.resolve() for p in exclude}
    pairs: dict[Path, Path] = {}
    inside_out = 0
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            root = path.resolve()
            found = [(p, p.relative_to(root).parent) for p in sorted(root.iterdir()) if p.is_file()]
        elif path.is_file():
            found = [(path.resolve(), Path())]
        else:
            pattern = os.path.expanduser(entry)
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise DeconflowError(
                    f"{entry!r} is not a file or folder and matches no files; check the path "
                    "(quote globs so that deconflow expands them, e.g. 'data/*.tif')."
                )
            # glob's matches start with the pattern's literal folder, so the rest of each
            # match's folder is the sub-path to keep (day1/cell.tif and day2/cell.tif)
            root = _glob_root(pattern)
            found = [
                (Path(m).resolve(), Path(m).parent.relative_to(root))
                for m in matches
                if Path(m).is_file()
            ]
        for source, sub in found:
            # a folder's entries may be links (a bead stack linked into each day's folder)
            real = source.resolve()
            if not _is_tiff(source) or real in skip:
                continue
            if real.is_relative_to(out_dir):
                inside_out += 1
                continue
            pairs.setdefault(source, out_dir / sub / f"{_stem(source)}{OUTPUT_SUFFIX}")
    if not pairs and inside_out:
        raise DeconflowError(
            f"Every input is inside the output folder {out_dir}, where files are taken as "
            "earlier outputs, not inputs; give an --out folder outside the input folders "
            "(e.g. a new sub-folder of them)."
        )
    if not pairs:
        raise DeconflowError(
            f"No TIFF inputs found in {', '.join(inputs)} (outputs under {out_dir} and the "
            "PSF files are not inputs); give .tif/.tiff files, folders or globs."
        )
    by_output: dict[Path, list[Path]] = {}
    for source, target in pairs.items():
        by_output.setdefault(target, []).append(source)
    clashes = [sources for sources in by_output.values() if len(sources) > 1]
    same_folder = [
        (target, sources)
        for target, sources in by_output.items()
        if len(sources) > 1 and len({s.parent for s in sources}) == 1
    ]
    if same_folder:
        # a.tif and a.ome.tif side by side: no glob or sub-folder tells their outputs apart
        names = "; ".join(
            f"{' and '.join(str(s) for s in sources)} -> {target.name}"
            for target, sources in same_folder[:3]
        )
        raise DeconflowError(
            f"Inputs in the same folder would write the same output: {names}. Rename one of "
            "them, or give them as files to separate batches with different --out folders."
        )
    if clashes:
        names = "; ".join(" and ".join(str(s) for s in group) for group in clashes[:3])
        raise DeconflowError(
            f"Inputs with the same name would write the same output: {names}. Give a "
            "quoted glob of their common folder instead (its sub-folders are kept under --out, "
            "e.g. 'data/**/*.tif'), or run them with different --out folders."
        )
    return sorted(pairs.items())


def output_for(source: Path, out_dir: Path) -> Path:
    """Output path of a single input file under ``out_dir``."""
    return out_dir / f"{_stem(source)}{OUTPUT_SUFFIX}"


def record_for(output: Path) -> Path:
    """Return the JSON provenance record path beside ``output`` (``x_deconvolved.json``)."""
    return output.with_name(_stem(output) + ".json")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (stacks can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_partials(outputs: Sequence[Path]) -> list[Path]:
    """Delete temporary files a killed run left beside these outputs; return them.

    ``kill -9`` gives :func:`~deconflow.io._atomic.atomic_destination` no chance
    to clean up, so its hidden ``.<name>.*.partial*`` files are removed here,
    before the outputs they belong to are written again.
    """
    removed: list[Path] = []
    for output in outputs:
        if not output.parent.is_dir():
            continue
        # the output's and its record's temporary names both start with ".<record stem>."
        prefix = glob.escape(partial_prefix(record_for(output).stem))
        for leftover in output.parent.glob(f"{prefix}*{PARTIAL_MARK}*"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
