"""Per-rule log files for stages that run inside the Snakemake process (as threads), each in a
resident-models scope (``execution/resident.py``)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

from .faults import fault
from .resident import STATS, resident_models


_IMPORT_LOCK = threading.Lock()


def warm_imports() -> None:
    """Import the heavy libraries once, under a lock: diffusers' lazy module loader is not
    thread-safe, and stages run as concurrent threads under the local profile."""
    with _IMPORT_LOCK:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel  # noqa: F401


class _ThisThread(logging.Filter):
    def __init__(self):
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record):
        return record.thread == self.ident


@contextlib.contextmanager
def rule_log(path):
    """Send this thread's ``opgrpo`` log records (and any traceback) to the rule's log file."""
    warm_imports()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(_ThisThread())
    logger = logging.getLogger("opgrpo")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    if os.environ.get("SLURM_JOB_ID"):  # which cluster job ran this stage (resuming, accounting)
        logger.info("SLURM job %s on %s", os.environ["SLURM_JOB_ID"], socket.gethostname())
    logger.info("worker pid %d", os.getpid())  # every stage of a cluster job: one process
    try:
        with resident_models():  # models stay loaded in this process between stages
            yield logger
        logger.info("resident models built in this process: backbone_loads=%d reward_builds=%d",
                    STATS["backbone"], STATS["reward"])
        fault("rule_done", path)  # outputs complete, Snakemake not yet told
    except BaseException:
        logger.exception("stage failed")
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
