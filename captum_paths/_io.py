"""Atomic file writes: one place for every file captum_paths writes (banks, results, figures, progress)."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: str = "") -> Iterator[str]:
    """A temporary file name in ``path``'s folder to write to; on success it is flushed to disk, given the
    permissions a new file gets here (``0o666`` less the umask, not ``mkstemp``'s ``0o600``) and renamed over
    ``path`` in one step, so readers see the old file or the new one, never a torn one; on failure it is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=str(path.parent.resolve()))
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
