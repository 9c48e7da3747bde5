"""TensorBoard event files of a run, one per record, so that ``tensorboard --logdir <output_root>/runs``
shows every run (and the base model's evaluation, run ``base``) side by side while they train.

TensorBoard treats a directory holding event files as one run: each run's files are in
``runs/<run>/`` (``layout.events``), one per training iteration (``events.out.tfevents.train_<k>``)
and one per held-out evaluation (``...heldout_<k>``). The name is fixed and each file is written
whole and renamed into place (formats/atomic.py), so rerunning one iteration replaces its points
instead of adding a second set: a step never appears twice. A TensorBoard already running keeps
the points it read before the rerun; restart it to see the new ones.

Written with TensorBoard's own protobufs and record writer (the ``tensorboard`` package, no
TensorFlow): scalars as ``simple_value`` (float32, as every TensorBoard scalar), the evaluation's
sample grid as an encoded PNG image.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from ..formats.atomic import atomic_path
from . import records

log = logging.getLogger("opgrpo.monitor")


def write_events(path, step: int, scalars: dict[str, float], wall_time: float, images: dict | None = None) -> None:
    """One event file: the version header, then one event holding every scalar (and image) at ``step``.
    ``images``: tag -> path of a PNG file."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    values = [summary_pb2.Summary.Value(tag=t, simple_value=float(v)) for t, v in sorted(scalars.items())]
    for tag, png in sorted((images or {}).items()):
        from PIL import Image

        with Image.open(png) as im:
            w, h, channels = im.width, im.height, len(im.getbands())
        values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
            height=h, width=w, colorspace=channels, encoded_image_string=Path(png).read_bytes())))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = RecordWriter(fh)
        writer.write(event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString())
        writer.write(event_pb2.Event(wall_time=wall_time, step=int(step),
                                     summary=summary_pb2.Summary(value=values)).SerializeToString())


def log_record(cfg: dict, run: str, kind: str, k: int, out: str, inputs: dict | None = None) -> dict[str, float]:
    """The rule ``tensorboard``: the record of run ``run``'s iteration ``k`` (``kind`` train or heldout)
    into its event file ``out``, then to wandb when ``logging.wandb`` is set. Returns the record."""
    t0 = time.perf_counter()
    step = records.step_of(run, k)
    if kind == "train":
        paths = inputs or records.train_inputs(run, k, last=k == int(cfg["train"]["iterations"]) - 1)
        rec = records.train_record(run, k, paths)
        images, written = {}, records.finished_at(paths["metrics"])
    elif kind == "heldout":
        paths = inputs or records.heldout_inputs(run, k)
        rec = records.heldout_record(run, k, paths)
        images, written = {"heldout/samples": paths["grid"]}, records.finished_at(paths["table"])
    else:
        raise ValueError(f"unknown record kind {kind!r}; expected 'train' or 'heldout'")
    write_events(out, step, rec, written, images)
    if (cfg.get("logging") or {}).get("wandb"):
        from . import wandb_feed

        wandb_feed.log(cfg, run, kind, step, rec, images)
    log.info("%s: %s record of iteration %d at step %d, %d scalars, %.3f s", out, kind, k, step, len(rec),
             time.perf_counter() - t0)
    return rec


@contextlib.contextmanager
def job_log(path):
    """This job's ``opgrpo.monitor`` lines (and a traceback) into its log file. Lighter than the stages'
    smk.rule_log, which imports torch and keeps models resident: this rule runs in the main Snakemake
    process, also on a cluster's submit host, where nothing else needs torch."""
    import threading

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    me = threading.get_ident()
    handler.addFilter(lambda r: r.thread == me)
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield
    except BaseException:
        log.exception("monitor job failed")
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
