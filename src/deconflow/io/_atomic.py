"""Atomic file and folder replacement: write under a temporary name, rename when complete."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_destination", "atomic_directory", "partial_prefix"]

#: Bytes of the final name's stem kept in a temporary name. With the dot, the random part
#: (8), ".partial" and the suffix, the temporary name then stays within the 255 bytes a
#: file name may have, even where the final name is itself near that limit.
_STEM_BYTES = 200


def partial_prefix(stem: str) -> str:
    """Start of the temporary names of files with this stem: ``.<stem, at most 200 bytes>.``."""
    kept = stem.encode("utf-8")[:_STEM_BYTES].decode("utf-8", errors="ignore")
    return f".{kept}."


@contextmanager
def atomic_destination(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` on success.

    On any exception the temporary file is removed and ``dest`` is untouched,
    so a crash or Ctrl-C never leaves a half-written file under the final name.
    The data is flushed to disk before the rename, so a power cut cannot leave
    the final name pointing at an empty or partly written file either.
    The temporary name keeps ``dest``'s suffix so that writers which pick a
    format from it still work.
    """
    final = Path(dest)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=partial_prefix(final.stem), suffix=f".partial{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # without this the rename can reach the disk before the data (ext4, XFS): after a
        # power cut the final name would hold an empty or partly written file
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root``) to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_directory(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; move it onto ``dest`` on success.

    The folder counterpart of :func:`atomic_destination`, for stores that are
    trees of files (OME-Zarr). On any exception the temporary folder is removed
    and ``dest`` is untouched. A folder cannot be renamed over a non-empty one,
    so an existing ``dest`` is first renamed aside (under a temporary name that
    :func:`deconflow.batch.files.remove_partials` also finds), the new folder
    renamed in, and the old one deleted: at no moment does the final name hold
    a partly written store. A kill between the two renames leaves no store under
    the final name and the old one aside, never a mixture.
    """
    final = Path(dest)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = partial_prefix(final.stem)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=f".partial{final.suffix}", dir=final.parent))
    try:
        yield tmp
        # as for files: without this the renames can reach the disk before the chunks
        _fsync_tree(tmp)
        # mkdtemp makes the folder private (0700); give it what a plain mkdir would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if final.exists() or final.is_symlink():
            # random like mkdtemp's names; the output folder is not shared with other writers
            old = final.with_name(f"{prefix}{secrets.token_hex(4)}.partial-old{final.suffix}")
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)
                raise
            _remove(old)
        else:
            os.rename(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
