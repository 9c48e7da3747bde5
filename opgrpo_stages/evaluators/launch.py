"""Start and stop the evaluator servers a workflow needs (Snakefile ``onstart`` / ``onsuccess`` /
``onerror``): every ``reward.options.<name>.server`` with a ``command`` is started once per URL
(unless a server already answers there), waited for up to ``startup_timeout`` seconds through its
health check, and stopped (SIGTERM, then SIGKILL) when the workflow ends. A server given only by
``url`` is the user's to run. Logs: ``logs/evaluators/<name>.log``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ..errors import ConfigError, OpgrpoError

STATE = Path(".snakemake") / "opgrpo-evaluators.json"
_PROCS: dict[int, subprocess.Popen] = {}  # started here: reaped here (a zombie would look alive)


def wanted(cfgs) -> dict[str, tuple[str, dict]]:
    """url -> (reward name, server options) of the servers to start, over the runs' configs."""
    out: dict[str, tuple[str, dict]] = {}
    for cfg in cfgs:
        for name, opts in (cfg.get("reward", {}).get("options") or {}).items():
            server = (opts or {}).get("server") if isinstance(opts, dict) else None
            if server and server.get("command"):
                if not server.get("url"):
                    raise ConfigError(f"reward.options.{name}.server.command is set but server.url is not")
                out.setdefault(server["url"].rstrip("/"), (name, server))
    return out


def _answers(url: str) -> bool:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url + "/v1/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def start(cfgs, log_dir="logs/evaluators") -> list[dict]:
    """Start the configured servers; returns what was started (also kept in STATE for stop())."""
    started = []
    try:
        for url, (name, server) in wanted(cfgs).items():
            if _answers(url):
                continue  # already running (the user's, or a previous workflow's): not ours to stop
            cmd = server["command"]
            argv = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            log = open(Path(log_dir) / f"{name}.log", "ab")
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            _PROCS[p.pid] = p
            started.append({"name": name, "url": url, "pid": p.pid})
            _save(started)
            deadline = time.monotonic() + float(server.get("startup_timeout", 600))
            while not _answers(url):
                if p.poll() is not None:
                    raise OpgrpoError(f"reward {name!r}: evaluator server command exited with status "
                                      f"{p.returncode} before answering {url} (see {log_dir}/{name}.log)")
                if time.monotonic() > deadline:
                    raise OpgrpoError(f"reward {name!r}: evaluator server did not answer {url}/v1/health within "
                                      f"{server.get('startup_timeout', 600)} s (see {log_dir}/{name}.log)")
                time.sleep(1.0)
    except BaseException:
        stop()
        raise
    return started


def _save(started):
    STATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(started))
    os.replace(tmp, STATE)


def stop(grace: float = 20.0) -> None:
    """Stop the servers start() started (their process groups), then forget them."""
    if not STATE.exists():
        return
    for s in json.loads(STATE.read_text()):
        try:
            os.killpg(s["pid"], signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            p = _PROCS.get(s["pid"])
            try:
                if p is not None and p.poll() is not None:
                    break
                os.killpg(s["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(s["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    STATE.unlink()
