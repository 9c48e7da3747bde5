"""Atomic writes: write to a temporary file in the target directory, then rename.

A killed process therefore leaves either the old file or the complete new one,
never a half-written file under the final name. The temporary file a killed writer left
behind (``.<name>.<random>.tmp``) is removed by the next write of the same file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path

from ..execution import fault


_UMASK = os.umask(0)  # read once at import (os.umask is process-wide; threads must not race on it)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed writer
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files, and a writer may replace the file (safetensors does): give every
        # artifact the usual permissions (0644 under umask 022) once written, for shared folders
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        fault("write", path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a node losing power must not lose a finished output)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
