"""wandb, optional and off by default: ``logging: {wandb: {project: <name>, mode: offline|online}}`` in
the config sends every record the TensorBoard rule writes (monitor/records.py) to a wandb run named
after the run. wandb is not a dependency of opgrpo: ``pip install wandb``.

Resumable without duplicate points: the wandb run's id is fixed by (output_root, project, run), so a
restarted pipeline resumes the same wandb run, and a ledger next to wandb's files
(``logs/wandb/<id>.sent``, one ``<kind> <step>`` line per record sent) keeps a record from being sent
twice (wandb cannot replace a point: a rerun iteration's new values stay in TensorBoard only; the
log says so). Every metric is plotted against ``iteration`` (the record's step, as in TensorBoard),
not wandb's own counter, so held-out records, which arrive after later training records, land at
their iteration.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from pathlib import Path

from .. import layout as L
from ..errors import ConfigError

_LOCK = threading.Lock()  # the rule's jobs run as threads of one Snakemake process
_RUNS: dict = {}  # wandb run id -> the open wandb Run of this process


def settings(cfg: dict) -> dict | None:
    return (cfg.get("logging") or {}).get("wandb")


def _import(source: str = "config"):
    try:
        import wandb
    except ImportError:
        raise ConfigError(f"{source}: key 'logging.wandb' is set but the wandb package is not installed: "
                          f"`pip install wandb`, or remove logging.wandb (TensorBoard logs are written anyway)") from None
    return wandb


def check(configs, source: str = "config") -> None:
    """Start-up check (Snakefile): with ``logging.wandb`` set, wandb imports and, in online mode, is
    logged in. One line naming the key otherwise."""
    for cfg in configs:
        w = settings(cfg)
        if not w:
            continue
        wandb = _import(source)
        if w.get("mode", "offline") == "online" and not wandb.login(prompt=False, verify=False):
            raise ConfigError(f"{source}: key 'logging.wandb.mode' is online but wandb has no login "
                              f"(`wandb login`, or WANDB_API_KEY); or set logging.wandb.mode: offline")


def run_id(cfg: dict, run: str) -> str:
    w = settings(cfg)
    h = hashlib.sha256(f"{os.path.abspath(L.RUNS)}\0{w['project']}\0{run}".encode()).hexdigest()[:10]
    return f"{run}-{h}"


def _open(cfg: dict, run: str):
    rid = run_id(cfg, run)
    if rid not in _RUNS:
        wandb = _import()
        w = settings(cfg)
        Path(L.log("wandb")).mkdir(parents=True, exist_ok=True)
        wr = wandb.init(project=w["project"], mode=w.get("mode", "offline"), id=rid, name=run, resume="allow",
                        dir=L.log("wandb"), config={k: v for k, v in cfg.items() if k != "logging"}, reinit="create_new")
        wr.define_metric("iteration")
        wr.define_metric("*", step_metric="iteration")
        _RUNS[rid] = wr
    return _RUNS[rid]


def log(cfg: dict, run: str, kind: str, step: int, record: dict, images: dict | None = None) -> bool:
    """Send one record unless the ledger has it; True when sent."""
    rid = run_id(cfg, run)
    ledger = Path(L.log(f"wandb/{rid}.sent"))
    key = f"{kind} {int(step)}"
    with _LOCK:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(ledger, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # and across processes
            fh.seek(0)
            if key in fh.read().splitlines():
                logging.getLogger("opgrpo.monitor").info(
                    "wandb: %s record of step %d was sent before; not sent again (wandb cannot replace points)", kind, step)
                return False
            wr = _open(cfg, run)
            data = {"iteration": int(step), **record}
            if images:
                wandb = _import()
                data.update({tag: wandb.Image(str(p)) for tag, p in images.items()})
            wr.log(data)
            fh.write(key + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return True
