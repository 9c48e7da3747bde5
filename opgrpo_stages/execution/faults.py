"""Fault injection for the kill-and-resume tests: ``OPGRPO_FAULT=<pattern>`` makes the process
SIGKILL itself at the first named point matching the shell-style pattern, e.g.

    OPGRPO_FAULT='policy_update:step:opgrpo:1'     # after the first optimizer step of iteration 1
    OPGRPO_FAULT='write:*/opgrpo/iter_00000/buffer.parquet'   # temp file written, not yet renamed

Point names are ``<stage>:<point>:<run>:<iteration>`` (see the ``fault(...)`` calls in the stages)
and ``write:<path>`` (in ``formats.atomic``). Unset (the normal case), ``fault`` is one ``if``.
SIGKILL, not an exception: nothing gets to clean up, as when a node dies or a job is pre-empted.
"""

from __future__ import annotations

import os

_PATTERN = os.environ.get("OPGRPO_FAULT") or None


def fault(*parts) -> None:
    """Named point ``':'.join(parts)``; kills this process if ``OPGRPO_FAULT`` matches it."""
    if _PATTERN is None:
        return
    import fnmatch
    import signal

    if fnmatch.fnmatchcase(":".join(str(p) for p in parts), _PATTERN):
        os.kill(os.getpid(), signal.SIGKILL)
