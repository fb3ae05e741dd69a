"""Atomic file replacement: write under a temporary name, rename when complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_destination", "partial_prefix"]

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
