"""Data parallel inside one stage (``rollout``, ``policy_update``) under ``accelerate launch``.

With ``distributed.processes = N > 1`` the Snakefile runs the stage's CLI under
``accelerate launch --multi_gpu --num_processes N`` (:func:`launch`); every process then calls
the same stage function, which asks :func:`data_parallel` for its share of the work:

- ``rollout``: each process samples a contiguous block of the 1-process run's forward batches
  (``sampling.batch_size``; a model's output can change slightly with its batch, so whole
  batches keep every sample bit-identical); the main process gathers latents, log-probs and
  images in order and writes the single output files. Every sample's noise comes from its own
  (seed, run, iteration, stage, group, sample) generator.
- ``policy_update``: each process takes a contiguous share of every minibatch; its losses keep
  the 1-process normalisation (divided by the whole minibatch's sample-step count), so summing
  the gradients over processes (:meth:`DataParallel.all_reduce_grads`) gives the 1-process
  gradient up to float summation order. Clipping and AdamW then run identically in every
  process; the main process writes.

The process group is set up by accelerate's ``PartialState``: gloo when ``runtime.device`` is
``cpu`` (accelerate's own ``--cpu`` flag only starts several processes through MPI, so the
launcher is always its torchrun one and the backend is chosen here), NCCL with one GPU per
process otherwise. A stage called outside a launch gets :data:`SINGLE` (no torch.distributed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from .errors import OpgrpoError

LAUNCHABLE = ("rollout", "policy_update")


class LaunchError(OpgrpoError):
    pass


def processes(cfg: dict) -> int:
    return int(cfg["distributed"]["processes"])


class DataParallel:
    """This process's place among the stage's processes, and the collectives the stages use."""

    def __init__(self, rank: int = 0, world: int = 1, object_group=None):
        self.rank, self.world = rank, world
        self._objects = object_group  # a gloo group: gathered objects travel through host memory

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This process's contiguous block of ``n`` items (blocks differ in size by at most one,
        earlier processes take the larger ones; some may be empty when n < world)."""
        sizes = [len(b) for b in np.array_split(np.arange(n), self.world)]
        lo = sum(sizes[: self.rank])
        return slice(lo, lo + sizes[self.rank])

    def gather_cat(self, *parts):
        """Concatenate each argument (torch tensor or numpy array, batch-first) over processes in
        rank order. Returns the full arrays on the main process, ``None`` for each elsewhere."""
        if self.world == 1:
            return parts
        import torch.distributed as dist

        host = [p.detach().cpu() if hasattr(p, "detach") else p for p in parts]
        got = [None] * self.world if self.is_main else None
        dist.gather_object(host, got, dst=0, group=self._objects)
        if not self.is_main:
            return tuple(None for _ in parts)
        out = []
        for i, p in enumerate(host):
            pieces = [g[i] for g in got]
            if hasattr(p, "detach"):
                import torch

                out.append(torch.cat(pieces))
            else:
                out.append(np.concatenate(pieces))
        return tuple(out)

    def all_reduce_grads(self, params) -> None:
        """Sum the gradients over processes (in place). A parameter without a gradient in some
        process (its share of the minibatch was empty) counts as zero there; one without a
        gradient in every process keeps none, as in a single process (AdamW then skips it)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        params = list(params)
        has = self.sum(*(float(p.grad is not None) for p in params))
        for p, n in zip(params, has):
            if n == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum(self, *values):
        """Sums of Python floats over processes (float64), in argument order."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self._objects)
        return tuple(float(v) for v in t)

    def sum_(self, *tensors) -> None:
        """Sum CPU tensors over processes in place (each holds its rows, zeros elsewhere)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self._objects)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self._objects)


SINGLE = DataParallel()


@contextlib.contextmanager
def data_parallel(cfg: dict):
    """The stage's :class:`DataParallel`: :data:`SINGLE` unless this process was started by a
    launcher (``WORLD_SIZE`` > 1). Joins the process group on entry, leaves it on exit (a gloo
    group left open aborts the interpreter at exit)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield SINGLE
        return
    import torch.distributed as dist
    from accelerate import PartialState

    device = str(cfg["runtime"]["device"])
    state = PartialState(cpu=device == "cpu")
    if state.num_processes != int(os.environ["WORLD_SIZE"]):  # accelerate found no backend for the device
        from .errors import ConfigError

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


# -- launching (called from the Snakefile) ----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(cfg: dict) -> dict:
    """A config file whose only run resolves to exactly ``cfg`` (what the in-process rule sees)."""
    out = {k: v for k, v in cfg.items() if k != "run"}
    out["runs"] = {cfg["run"]: {}}
    return out


def launch_command(stage: str, config_path, run: str, iteration: int, paths: dict, n: int) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",  # override any
           "--main_process_port", str(_free_port()),  # user accelerate config; mixed precision is the backbone's
           "-m", "opgrpo_stages.cli", stage, "--config", str(config_path), "--run", run, "--iteration", str(iteration)]
    for name, value in paths.items():
        if value is None:  # not used by this run (e.g. no prompt-embeddings file): the CLI default applies
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        cmd += ["--" + name.replace("_", "-"), *(str(v) for v in values)]
    return cmd


def launch(stage: str, cfg: dict, iteration: int, paths: dict, log_path) -> None:
    """Run ``stage`` with ``distributed.processes`` processes as a subprocess, its output (every
    process's) in ``log_path``; the resolved run config goes to ``<log>.config.yaml`` next to it.
    Raises :class:`LaunchError` naming the log when any process fails."""
    import yaml

    from .formats.atomic import write_text

    if stage not in LAUNCHABLE:
        raise ValueError(f"stage {stage!r} does not run data parallel (only {LAUNCHABLE})")
    log_path = Path(log_path)
    config_path = log_path.with_name(log_path.name + ".config.yaml")
    write_text(config_path, yaml.safe_dump(run_config(cfg), sort_keys=False))
    n = processes(cfg)
    cmd = launch_command(stage, config_path, cfg["run"], iteration, paths, n)
    package_root = str(Path(__file__).resolve().parents[1])  # the processes import this very package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise LaunchError(f"{stage} of run {cfg['run']} iteration {iteration} with {n} processes failed "
                          f"(accelerate launch exit status {rc}); see {log_path}")
