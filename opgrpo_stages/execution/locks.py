"""Stale Snakemake locks after a kill: rerunning the same command must resume.

Snakemake locks the working directory with files under .snakemake/locks/ and removes them on
exit; a SIGKILLed or pre-empted Snakemake cannot, and the next run then refuses to start
("Directory cannot be locked") until `snakemake --unlock`. We record which lock files a
Snakemake process owns (Snakefile ``onstart``) and, at the next start on the same host, remove
the lock files of an owner that is no longer alive. A lock file is removed only if it is the
very file (inode, mtime) the dead owner recorded. Owners on other hosts (a shared file system)
are never judged: there `snakemake --unlock` stays the way out.
"""

from __future__ import annotations

import contextlib
import glob
from pathlib import Path

_LOCKS = Path(".snakemake/locks")


def _owner_file() -> Path:
    import os
    import socket

    return _LOCKS / f"opgrpo-owner.{socket.gethostname()}.{os.getpid()}.json"


def _identity(p: Path):
    st = p.stat()
    return [st.st_ino, st.st_mtime_ns]


def record_lock_owner() -> None:
    """Called from ``onstart`` (Snakemake holds its locks by then): claim the unclaimed lock files."""
    import json

    if not _LOCKS.is_dir():
        return
    claimed = set()
    for f in _LOCKS.glob("opgrpo-owner.*.json"):
        with contextlib.suppress(OSError, ValueError):
            claimed |= set(json.loads(f.read_text()))
    mine = {p.name: _identity(p) for p in _LOCKS.glob("*.lock") if p.name not in claimed}
    from ..formats.atomic import write_text

    write_text(_owner_file(), json.dumps(mine))


def release_lock_owner() -> None:
    """Called from ``onsuccess``/``onerror``: Snakemake removes its own lock files."""
    with contextlib.suppress(FileNotFoundError):
        _owner_file().unlink()


def clear_stale_locks() -> list[str]:
    """Remove lock files whose recorded owner ran on this host and is gone; returns their names."""
    import json
    import os
    import socket

    removed = []
    host = socket.gethostname()
    for f in _LOCKS.glob(f"opgrpo-owner.{glob.escape(host)}.*.json"):
        pid = int(f.name.removesuffix(".json").rsplit(".", 1)[1])
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError, ValueError):
            for name, ident in json.loads(f.read_text()).items():
                lock = _LOCKS / name
                # the same file the dead owner wrote, not a live run's lock that reused the name
                if lock.exists() and _identity(lock) == ident:
                    lock.unlink()
                    removed.append(name)
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    return removed


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
