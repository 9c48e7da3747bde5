"""Models resident in a worker process: loaded once, lent to one stage at a time.

Inside a cluster job (and under ``profiles/local``) Snakemake runs every stage of the job as a
thread of one process (``docs/architecture.md``, "Resident worker"). Within ``resident_models()``
(opened by ``logs.rule_log`` around each stage) ``lend(kind, key, build)`` hands out an idle model
built earlier under the same key, or builds one; the stage holds it until the scope closes, so
two stages running at once (buffer_update next to policy_update, two runs side by side) never
share a model. Outside the scope (the ``opgrpo <stage>`` CLI, tests calling a stage) every call
builds afresh, exactly as before. Callers reset a lent model to the state a fresh build gives
(``stages.common.load_backbone`` swaps the policy in), so files stay byte-identical.

``STATS`` counts builds per kind in this process (``backbone``, ``reward``): the stage logs and
``benchmarks/iteration_overhead.py`` report them.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter

STATS: Counter = Counter()
_LOCK = threading.Lock()
_IDLE: dict[tuple, list] = {}  # (kind, key) -> models built earlier, free to lend
_LOCAL = threading.local()  # .leases: [(kind, key, model)] of the open scope in this thread


def stamp(path) -> tuple | None:
    """(path, mtime_ns, size) of a file, so a rewritten file is never served from memory."""
    import os

    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None, None)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def active() -> bool:
    return getattr(_LOCAL, "leases", None) is not None


def lend(kind: str, key: tuple, build):
    """``(model, reused)``: an idle model of ``(kind, key)`` lent to this thread's scope, or
    ``build()``'s (counted in ``STATS[kind]``). Without an open scope: always ``build()``."""
    leases = getattr(_LOCAL, "leases", None)
    if leases is not None:
        with _LOCK:
            idle = _IDLE.get((kind, key))
            model = idle.pop() if idle else None
        if model is not None:
            leases.append((kind, key, model))
            return model, True
    model = build()
    with _LOCK:
        STATS[kind] += 1
    if leases is not None:
        leases.append((kind, key, model))
    return model, False


@contextlib.contextmanager
def resident_models():
    """Scope of one stage: models lent inside go back to the process's pool at exit (also when
    the stage fails: a lent model is always reset before its next use)."""
    if active():  # nested: the outer scope owns the leases
        yield
        return
    _LOCAL.leases = []
    try:
        yield
    finally:
        leases, _LOCAL.leases = _LOCAL.leases, None
        with _LOCK:
            for kind, key, model in leases:
                _IDLE.setdefault((kind, key), []).append(model)


def clear() -> None:
    """Forget every idle model (tests; frees memory)."""
    with _LOCK:
        _IDLE.clear()
