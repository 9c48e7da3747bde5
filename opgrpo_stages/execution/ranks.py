"""Resident data-parallel ranks: started once per Snakemake process, kept for all its stages.

With ``distributed.nodes`` x ``distributed.processes`` = W > 1, the process that runs Snakemake
(a cluster job's, or ``profiles/local``'s) is rank 0. At the first data-parallel stage it starts
ranks 1..W-1 (:func:`pool_for`), which stay up until Snakemake exits; each keeps its models in
its own resident pool (``execution/resident.py``) across the job's stages and iterations,
as rank 0 does. For every data-parallel stage rank 0 broadcasts ``(stage, run config,
iteration, paths, log)`` and all ranks call the same stage function with their
:class:`~opgrpo_stages.execution.collectives.DataParallel` (:func:`run`); between stages the ranks wait
on the next broadcast. How the ranks come to exist:

- inside a Slurm job (``SLURM_JOB_ID``): one ``srun --overlap`` step over the job's nodes, W
  tasks, ``distributed.processes`` per node; task 0 (on the batch node, where rank 0 runs) exits
  at once. Rank 0's address is its node's ``NodeAddr`` (``scontrol show node``): node names
  need not resolve.
- started by a launcher before Snakemake (``python -m opgrpo_stages.execution.ranks snakemake ...`` under
  ``torchrun`` on every machine): rank 0 runs Snakemake in its process, the others serve;
  ``MASTER_ADDR``/``MASTER_PORT`` come from the launcher.
- otherwise (this machine): W-1 subprocesses rendezvousing on 127.0.0.1.

The process group is gloo when ``runtime.device`` is ``cpu``; on GPUs NCCL (one GPU per rank:
``cuda:LOCAL_RANK``) with a gloo group beside it for commands and small objects. A rank whose
stage fails exits; the others then fail in their next collective, the stage's rule fails, and
the pool is shut down (the next data-parallel stage starts a fresh one).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

from ..errors import ConfigError, OpgrpoError

log = logging.getLogger("opgrpo")

# stages that run on every rank (their rules call execution.run_stage, their functions take (cfg, iteration,
# **paths) and ask distributed.data_parallel for their share); the others run on rank 0 alone, as
# with one process. A stage that shards (score, evaluate) joins by being listed here.
STAGES = {
    "rollout": "opgrpo_stages.stages.rollout:rollout",
    "policy_update": "opgrpo_stages.stages.policy_update:policy_update",
    "score": "opgrpo_stages.stages.score:score",
    "evaluate": "opgrpo_stages.stages.evaluate:evaluate_stage",
}
# a rank idles between stages for as long as rank 0 runs other stages (score, buffer update,
# evaluations under profiles/local): collectives must not time out there. A dead peer still
# fails at once (its sockets close).
IDLE_TIMEOUT = datetime.timedelta(days=7)
# the NCCL group (rendezvous, gradient all-reduce inside a stage) never idles: a rank that is gone
# (killed mid all-reduce, or a launcher's ranks that never come) fails the stage after this, not
# at the job's time limit
STEP_TIMEOUT = datetime.timedelta(minutes=30)
RANK0_ENV = "OPGRPO_RANK0"  # set by `python -m opgrpo_stages.execution.ranks` in the rank-0 process it launched


POOL_ENV = "OPGRPO_POOL"  # set by rank 0 for itself and its ranks


@contextlib.contextmanager
def one_load_at_a_time():
    """Around a model build: on one node, the ranks of one pool build one after the other (each
    reads the weights into host memory before moving them to its GPU; W ranks at once would hold
    W copies, e.g. 8 x 4.2 GiB for SD3.5-M's transformer). A no-op outside a pool."""
    pool = os.environ.get(POOL_ENV)
    if not pool:
        yield
        return
    import fcntl
    import tempfile

    path = Path(tempfile.gettempdir()) / f"opgrpo-loads-{os.getuid()}-{re.sub(r'[^A-Za-z0-9_.-]', '_', pool)}.lock"
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RankError(OpgrpoError):
    pass


def world_size(cfg: dict) -> int:
    d = cfg["distributed"]
    return int(d.get("nodes", 1)) * int(d["processes"])


_SERVING = False  # this process is a rank of a pool (rank 0 or a worker)
_LOCAL = threading.local()  # .dp: the DataParallel of the stage running in this thread


def current():
    """The :class:`DataParallel` of the data-parallel stage running in this thread, or None."""
    return getattr(_LOCAL, "dp", None)


def serving() -> bool:
    """This process is (or, started by a launcher as rank 0, will be) a rank of a pool: a stage not
    dispatched to the ranks runs alone here, whatever ``WORLD_SIZE`` says."""
    return _SERVING or os.environ.get(RANK0_ENV) == "1"


def _stage_function(stage: str):
    import importlib

    module, name = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), name)


def _where() -> str:
    """This rank's host, and its Slurm node when that differs (several slurmd on one host)."""
    host, node = socket.gethostname(), os.environ.get("SLURMD_NODENAME")
    return f"{host} (node {node})" if node and node != host else host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _slurm_node_addr(node: str) -> str:
    """The node's ``NodeAddr`` (what Slurm itself connects to; its name may not resolve)."""
    out = subprocess.run(["scontrol", "show", "node", node, "-o"], capture_output=True, text=True).stdout
    m = re.search(r"\bNodeAddr=(\S+)", out)
    if not m:
        raise RankError(f"scontrol show node {node}: no NodeAddr in its answer {out.strip()[:200]!r}")
    return m.group(1)


def _init_group(rank: int, world: int, device: str, init_method: str):
    """Join the process group; returns the gloo group for objects (None: the default is gloo)."""
    import torch.distributed as dist

    cuda = device != "cpu"
    if cuda:
        import torch

        # cuBLAS reads it once, when CUDA starts (here, before any stage's setup_torch could set it)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=STEP_TIMEOUT if cuda else IDLE_TIMEOUT)
    return dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT) if cuda else None


def job_cpus_per_node(environ) -> int | None:
    """CPUs the job holds on each of its nodes (the fewest: every node's ranks must fit):
    ``SLURM_JOB_CPUS_PER_NODE`` (``16(x2)`` or ``16,8``), else ``SLURM_CPUS_ON_NODE``; None when
    Slurm says neither."""
    counts = [int(c) for c in re.findall(r"(\d+)(?:\(x\d+\))?", environ.get("SLURM_JOB_CPUS_PER_NODE", ""))]
    if counts:
        return min(counts)
    v = environ.get("SLURM_CPUS_ON_NODE", "")
    return int(v) if v.isdigit() else None


def rank_step_command(job_id: str, nodes: int, world: int, per_node: int, cpus_on_node: int | None,
                      worker: list[str]) -> list[str]:
    """The ``srun`` that starts every rank inside the job (rank 0's task exits at once):
    ``--cpus-per-task`` = the node's CPUs shared out among its ranks (srun's default of one CPU per
    task would bind each rank to one core), ``--wait=0`` (on sites that set ``WaitTime``, srun would
    kill the other ranks that many seconds after task 0 exits)."""
    cpus = max(1, cpus_on_node // per_node) if cpus_on_node else None
    return ["srun", f"--jobid={job_id}", "--overlap", f"--nodes={nodes}", f"--ntasks={world}",
            f"--ntasks-per-node={per_node}", *([f"--cpus-per-task={cpus}"] if cpus else []), "--wait=0",
            "--kill-on-bad-exit=1", "--job-name=opgrpo-ranks", *worker, "--from-slurm"]


class Pool:
    """Rank 0's handle on the ranks: one data-parallel stage at a time (:attr:`lock`)."""

    def __init__(self, world: int, device: str, nodes: int, per_node: int):
        self.world, self.device, self.nodes, self.per_node = world, device, nodes, per_node
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []
        self.group = None
        self.ranks: list[tuple] = []  # (rank, pid, where) of every rank
        self.mode = ""

    # -- start and stop ------------------------------------------------------------------------
    def start(self) -> None:
        import torch.distributed as dist

        from .collectives import DataParallel

        # names this pool's node-local load lock (one_load_at_a_time): rank 0's and its ranks' own
        os.environ[POOL_ENV] = f"{socket.gethostname()}-{os.getpid()}-{id(self)}"
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        package_root = str(Path(__file__).resolve().parents[2])  # the ranks import this very package
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        worker = [sys.executable, "-m", "opgrpo_stages.execution.ranks", "serve", "--device", self.device]
        if os.environ.get(RANK0_ENV) == "1":  # the launcher started every rank already
            self.mode = "launcher"
            if int(os.environ.get("WORLD_SIZE", "1")) != self.world:
                raise ConfigError(f"distributed: nodes x processes = {self.world} but the launcher started "
                                  f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} ranks")
            theirs = os.environ.get("OPGRPO_RANKS_DEVICE", "cpu")
            if (theirs == "cpu") != (self.device == "cpu"):  # NCCL here, gloo there: a rendezvous that never ends
                raise ConfigError(f"runtime.device = {self.device!r} but the launcher's ranks serve "
                                  f"OPGRPO_RANKS_DEVICE={theirs!r}; export OPGRPO_RANKS_DEVICE="
                                  f"{'cpu' if self.device == 'cpu' else 'cuda'} for every rank (torchrun) and relaunch")
            init = "env://"
        elif os.environ.get("SLURM_JOB_ID"):
            self.mode = "srun"
            node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
            addr, port = _slurm_node_addr(node), _free_port()
            # the step's own SLURM_* (one task, one node) would constrain the new step: keep the job's id
            env = {k: v for k, v in env.items() if not (k.startswith(("SLURM_", "SRUN_", "SBATCH_")))
                   or k in ("SLURM_JOB_ID", "SLURM_CONF")}
            env.update(MASTER_ADDR=addr, MASTER_PORT=str(port), WORLD_SIZE=str(self.world))
            cmd = rank_step_command(os.environ["SLURM_JOB_ID"], self.nodes, self.world, self.per_node,
                                    job_cpus_per_node(os.environ), worker)
            self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
            init = f"tcp://{addr}:{port}"
        else:
            self.mode = "local"
            port = _free_port()
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(self.world))
            for r in range(1, self.world):
                self.procs.append(subprocess.Popen(worker, stdin=subprocess.DEVNULL,
                                                   env={**env, "RANK": str(r), "LOCAL_RANK": str(r % self.per_node)}))
            init = f"tcp://127.0.0.1:{port}"
        os.environ.setdefault("LOCAL_RANK", "0")
        self.group = _init_group(0, self.world, self.device, init)
        got = [None] * self.world
        dist.all_gather_object(got, (0, os.getpid(), _where()), group=self.group)
        self.ranks = got
        self.dp = DataParallel(0, self.world, self.group)

    def broadcast(self, command) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([command], src=0, group=self.group)

    def close(self, abort: bool = False) -> None:
        """Stop the ranks (``abort``: after a failure, when they may be stuck in a collective)."""
        import torch.distributed as dist

        if not abort and dist.is_initialized():
            with contextlib.suppress(Exception):
                self.broadcast(("stop",))
        for p in self.procs:
            if abort:
                p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


_POOL: Pool | None = None
_POOL_LOCK = threading.Lock()
_STARTED = False  # a pool was started in this process (the launcher's ranks joined it once)


def pool_for(cfg: dict) -> Pool:
    """This process's pool for the run's ``distributed`` settings, started on first use."""
    global _POOL, _SERVING, _STARTED
    d = cfg["distributed"]
    key = (world_size(cfg), str(cfg["runtime"]["device"]) if str(cfg["runtime"]["device"]) == "cpu" else "cuda",
           int(d.get("nodes", 1)), int(d["processes"]))
    with _POOL_LOCK:
        if _POOL is not None and (_POOL.world, _POOL.device, _POOL.nodes, _POOL.per_node) != key:
            if _POOL.mode == "launcher":
                raise ConfigError(f"run {cfg['run']}: distributed settings {key[2]} x {key[3]} differ from those "
                                  f"of the ranks this launcher started ({_POOL.nodes} x {_POOL.per_node})")
            with _POOL.lock:
                _POOL.close()
            _POOL = None
        if _POOL is None:
            if _STARTED and os.environ.get(RANK0_ENV) == "1":
                raise RankError("the ranks the launcher started are gone (an earlier data-parallel stage failed); "
                                "rerun the same command to continue")
            pool = Pool(*key)
            _SERVING = _STARTED = True
            try:
                pool.start()
            except BaseException:
                pool.close(abort=True)
                raise
            _POOL = pool
            log.info("data parallel: %d ranks started (%s): %s", pool.world, pool.mode,
                     ", ".join(f"rank {r} pid {p} on {h}" for r, p, h in pool.ranks))
        return _POOL


def shutdown() -> None:
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        with pool.lock:
            pool.close()


atexit.register(shutdown)


def run(stage: str, fn, cfg: dict, iteration: int, paths: dict, log_path) -> None:
    """Run a data-parallel stage on every rank of the pool: ``fn(cfg, iteration, **paths)`` here
    (rank 0, its log in ``log_path``) and the same stage on the other ranks (their logs in
    ``<log_path>.rank<r>``). Raises when any rank fails; the pool is then shut down."""
    global _POOL
    from .logs import rule_log

    pool = pool_for(cfg)
    with pool.lock:
        try:
            pool.broadcast(("stage", stage, cfg, iteration, paths, str(log_path), os.getcwd()))
            with rule_log(log_path) as logger:
                for r, pid, host in pool.ranks:
                    logger.info("data parallel: rank %d of %d pid %d on %s", r, pool.world, pid, host)
                _LOCAL.dp = pool.dp
                try:
                    fn(cfg, iteration, **paths)
                finally:
                    _LOCAL.dp = None
        except BaseException as exc:
            with _POOL_LOCK:
                if _POOL is pool:
                    _POOL = None
            pool.close(abort=True)
            if isinstance(exc, Exception) and not isinstance(exc, OpgrpoError):
                raise RankError(f"{stage} of run {cfg['run']} iteration {iteration} on {pool.world} ranks failed: "
                                f"{type(exc).__name__}: {exc}; see {log_path} and {log_path}.rank<r>") from exc
            raise


# -- the other ranks ----------------------------------------------------------------------------

def serve(device: str, from_slurm: bool = False) -> int:
    """A rank's loop: join the group, then run every broadcast stage until told to stop."""
    global _SERVING
    import torch.distributed as dist

    from .collectives import DataParallel
    from .logs import rule_log

    if from_slurm:
        rank = int(os.environ["SLURM_PROCID"])
        if rank == 0:
            return 0  # rank 0 is the Snakemake process on this node
        os.environ.update(RANK=str(rank), LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _SERVING = True
    group = _init_group(rank, world, device, "env://")
    dist.all_gather_object([None] * world, (rank, os.getpid(), _where()), group=group)
    dp = DataParallel(rank, world, group)
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=group)
        command = box[0]
        if command[0] == "stop":
            break
        _, stage, cfg, iteration, paths, log_path, cwd = command
        os.chdir(cwd)  # paths are relative to Snakemake's working directory
        try:
            with rule_log(f"{log_path}.rank{rank}") as logger:
                logger.info("data parallel: rank %d of %d, %s of run %s iteration %d", rank, world, stage,
                            cfg["run"], iteration)
                _LOCAL.dp = dp
                try:
                    _stage_function(stage)(cfg, iteration, **paths)
                finally:
                    _LOCAL.dp = None
        except BaseException:
            logging.getLogger("opgrpo").exception("rank %d: %s failed", rank, stage)
            os._exit(1)  # the other ranks fail in their next collective instead of waiting forever
    dist.destroy_process_group()
    return 0


def _launch_snakemake(args: list[str]) -> int:
    """Rank 0 under a launcher: Snakemake in this process, the ranks stopped when it ends."""
    os.environ[RANK0_ENV] = "1"
    from snakemake.cli import main

    try:
        main(args)
        rc = 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if not _STARTED:  # no data-parallel stage ran: the others still wait to join
            _stop_waiting_ranks()
        shutdown()
    return rc


def _stop_waiting_ranks() -> None:
    import torch.distributed as dist

    world = int(os.environ["WORLD_SIZE"])
    group = _init_group(0, world, os.environ.get("OPGRPO_RANKS_DEVICE", "cpu"), "env://")
    dist.all_gather_object([None] * world, (0, os.getpid(), _where()), group=group)
    dist.broadcast_object_list([("stop",)], src=0, group=group)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m opgrpo_stages.execution.ranks snakemake ARGS...`` on every rank started by a launcher
    (torchrun): rank 0 runs Snakemake, the others serve its data-parallel stages.
    ``... serve``: a rank started by rank 0 itself (internal). ``OPGRPO_RANKS_DEVICE=cuda``
    when the runs train on GPUs (the device of the group before any config is read)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if argv[:1] == ["serve"]:
        device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
        return serve(device, from_slurm="--from-slurm" in argv)
    if argv[:1] == ["snakemake"]:
        if int(os.environ.get("RANK", "0")) == 0:
            return _launch_snakemake(argv[1:])
        return serve(os.environ.get("OPGRPO_RANKS_DEVICE", "cpu"))
    print("usage: python -m opgrpo_stages.execution.ranks snakemake [snakemake arguments]  (under torchrun, every rank)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":  # through the package module: one copy of this module's state
    from opgrpo_stages.execution.ranks import main as _main

    sys.exit(_main())
