"""Data parallel inside one stage (``rollout``, ``policy_update``): shares and collectives.

With ``distributed.nodes`` x ``distributed.processes`` = W > 1 the Snakefile runs these stages on
the resident ranks of ``execution/ranks.py`` (started once per Snakemake process); every rank
calls the same stage function, which asks :func:`data_parallel` for its share of the work:

- ``rollout``: each rank samples a contiguous block of the 1-process run's forward batches
  (``sampling.batch_size``; a model's output can change slightly with its batch, so whole
  batches keep every sample bit-identical); rank 0 gathers latents, log-probs and images in
  order (tensor collectives, :meth:`DataParallel.gather_cat`) and writes the single output
  files. Every sample's noise comes from its own (seed, run, iteration, stage, group, sample)
  generator.
- ``policy_update``: each rank takes a contiguous share of every minibatch's microbatches and
  reads only those samples' trajectory rows and prompt embeddings; its losses keep the
  1-process normalisation (divided by the whole minibatch's sample-step count), so summing the
  gradients over ranks (:meth:`DataParallel.all_reduce_grads`) gives the 1-process gradient up
  to float summation order. Clipping and AdamW then run identically on every rank; rank 0
  writes.

A stage called outside a pool gets :data:`SINGLE` (no torch.distributed), unless its process
was started by a launcher for that one stage (``accelerate launch -m opgrpo_stages.cli rollout
...`` by hand: ``WORLD_SIZE`` > 1), where accelerate's ``PartialState`` joins the group.
"""

from __future__ import annotations

import contextlib
import logging
import os

from .collectives import SINGLE, DataParallel


@contextlib.contextmanager
def data_parallel(cfg: dict):
    """The stage's :class:`DataParallel`: the rank's own when the stage runs on the resident
    ranks (``execution/ranks.py``), :data:`SINGLE` for any other stage in such a process or
    outside any launcher. Ends with a barrier: rank 0 has written every output before the
    stage returns anywhere."""
    from . import ranks

    dp = ranks.current()
    if dp is not None:
        yield dp
        dp.barrier()
        return
    if ranks.serving() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield SINGLE
        return
    with _launched(cfg) as dp:
        yield dp


@contextlib.contextmanager
def _launched(cfg: dict):
    """A stage CLI started under ``accelerate launch`` / torchrun by hand: join the process
    group on entry, leave it on exit (a gloo group left open aborts the interpreter at exit)."""
    import torch.distributed as dist
    from accelerate import PartialState

    device = str(cfg["runtime"]["device"])
    state = PartialState(cpu=device == "cpu")
    if state.num_processes != int(os.environ["WORLD_SIZE"]):  # accelerate found no backend for the device
        from ..errors import ConfigError

        raise ConfigError(f"runtime.device: {device!r}: cannot run {os.environ['WORLD_SIZE']} data-parallel "
                          f"processes on it (no GPU here?); use runtime.device: cpu for gloo")
    objects = None if state.backend == "gloo" else dist.new_group(backend="gloo")
    dp = DataParallel(state.process_index, state.num_processes, objects)
    logging.getLogger("opgrpo").info("data parallel: process %d of %d (%s, %s)", dp.rank, dp.world,
                                     state.backend, state.device)
    try:
        yield dp
        dp.barrier()  # the main process has written every output before any process exits 0
    finally:
        state.destroy_process_group()
