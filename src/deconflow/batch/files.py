"""Which files a batch reads and writes: input expansion, output names, hashes, leftovers.

An input is a TIFF file or an OME-Zarr store (a ``.zarr`` folder), which counts as one
input and is never searched for further inputs.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from deconflow._errors import DeconflowError
from deconflow.io._atomic import partial_prefix
from deconflow.io._zarr import is_store

__all__ = [
    "OUTPUT_SUFFIX",
    "PARTIAL_MARK",
    "ZARR_OUTPUT_SUFFIX",
    "check_output_apart",
    "expand_inputs",
    "output_for",
    "record_for",
    "remove_partials",
    "sha256_file",
    "sha256_input",
]

OUTPUT_SUFFIX = "_deconvolved.ome.tif"
#: Output name ending with ``--output-format ome-zarr``.
ZARR_OUTPUT_SUFFIX = "_deconvolved.ome.zarr"
#: Part of the temporary names :func:`deconflow.io._atomic.atomic_destination` uses.
PARTIAL_MARK = ".partial"
_TIFF_SUFFIXES = (".tif", ".tiff")
_CHUNK = 1 << 22


def _is_store(path: Path) -> bool:
    """Whether a folder or glob entry is a zarr store taken as one input (a ``.zarr`` folder)."""
    return path.suffix.lower() == ".zarr" and is_store(path)


def _is_input(path: Path) -> bool:
    # hidden: temporary names of interrupted writes (".<stem>.*.partial.tif/.zarr")
    if path.name.startswith("."):
        return False
    return (path.suffix.lower() in _TIFF_SUFFIXES and path.is_file()) or _is_store(path)


def _inside_store(path: Path, root: Path) -> bool:
    """Whether ``path`` lies inside a ``.zarr`` folder below ``root`` (a store's own arrays)."""
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        parts = path.parent.parts
    return any(part.lower().endswith(".zarr") for part in parts)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr"):
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
    inputs: Sequence[str],
    out_dir: Path,
    exclude: Sequence[Path] = (),
    output_suffix: str = OUTPUT_SUFFIX,
) -> list[tuple[Path, Path]]:
    """Turn files, folders and globs into ``(input, output)`` pairs, sorted by input.

    Folders contribute their ``*.tif``/``*.tiff`` files and ``*.zarr`` stores
    (not recursively; use a ``**`` glob for that); a zarr store, given or
    found, is one input and is never searched. Outputs are named
    ``<stem><output_suffix>``. A glob's matches keep their sub-folders below the
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
        if is_store(path):
            # a store given by name counts whatever its name (an image inside a plate, say)
            found = [(path.resolve(), Path())]
        elif path.is_dir():
            root = path.resolve()
            found = [(p, Path()) for p in sorted(root.iterdir()) if _is_input(p)]
        elif path.is_file():
            found = [(path.resolve(), Path())] if _is_input(path) else []
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
                if _is_input(Path(m)) and not _inside_store(Path(m), root)
            ]
        for source, sub in found:
            # a folder's entries may be links (a bead stack linked into each day's folder)
            real = source.resolve()
            if real in skip:
                continue
            if real.is_relative_to(out_dir):
                inside_out += 1
                continue
            pairs.setdefault(source, out_dir / sub / f"{_stem(source)}{output_suffix}")
    if not pairs and inside_out:
        raise DeconflowError(
            f"Every input is inside the output folder {out_dir}, where files are taken as "
            "earlier outputs, not inputs; give an --out folder outside the input folders "
            "(e.g. a new sub-folder of them)."
        )
    if not pairs:
        raise DeconflowError(
            f"No TIFF or OME-Zarr inputs found in {', '.join(inputs)} (outputs under {out_dir} "
            "and the PSF files are not inputs); give .tif/.tiff files, .zarr stores, folders "
            "or globs."
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


def check_output_apart(output: Path, source: Path, psfs: list[Path]) -> None:
    """Refuse an output that is, holds or lies inside an input (stores are folders).

    Replacing an OME-Zarr output replaces its whole folder, so an input inside
    it would be deleted; an output inside an input store would change the input.
    """
    out = output.resolve()
    for path in (source, *psfs):
        real = path.resolve()
        if out == real or out.is_relative_to(real) or real.is_relative_to(out):
            raise DeconflowError(
                f"The output {output} is, holds or lies inside the input {path}; inputs are "
                "never written. Choose an output outside the inputs."
            )


def output_for(source: Path, out_dir: Path, output_suffix: str = OUTPUT_SUFFIX) -> Path:
    """Output path of a single input file under ``out_dir``."""
    return out_dir / f"{_stem(source)}{output_suffix}"


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


def sha256_input(path: Path) -> str:
    """SHA-256 of an input: a file's bytes, or a zarr store's relative file names and bytes.

    A store is hashed file by file in sorted order of their relative paths,
    each as its path, a NUL, its size and its bytes (streamed in chunks), so
    that moving bytes between files or renaming a chunk changes the hash.
    """
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    files = sorted(
        (Path(folder, name).relative_to(path).as_posix(), Path(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )
    for relative, file in files:
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def remove_partials(outputs: Sequence[Path]) -> list[Path]:
    """Delete temporary files and stores a killed run left beside these outputs; return them.

    ``kill -9`` gives :func:`~deconflow.io._atomic.atomic_destination` and
    :func:`~deconflow.io._atomic.atomic_directory` no chance to clean up, so
    their hidden ``.<name>.*.partial*`` files and folders (a half-written
    OME-Zarr store, or a replaced one set aside) are removed here, before the
    outputs they belong to are written again.
    """
    removed: list[Path] = []
    for output in outputs:
        if not output.parent.is_dir():
            continue
        # the output's and its record's temporary names both start with ".<record stem>."
        prefix = glob.escape(partial_prefix(record_for(output).stem))
        for leftover in output.parent.glob(f"{prefix}*{PARTIAL_MARK}*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
