"""How stages are run: in-process threads, the resident model pool, data-parallel ranks, cluster
resources, locks, storage pruning, fault injection and the Snakemake patches.

Two interfaces, and nothing outside this package imports any other of its modules
(``tests/test_architecture.py``):

- this module, for stages and file formats: :func:`data_parallel`, :func:`fault`, :func:`lend`,
  :func:`stamp`, :func:`one_load_at_a_time`; :func:`training_job` for ``opgrpo preflight``. Each
  is a thin function that imports its submodule when called, so importing it
  costs nothing and cannot close an import circle.
- :mod:`opgrpo_stages.execution.workflow`, for the Snakefile (and benchmarks): running a stage
  for its rule, logs, locks, storage pruning, cluster resources, the Snakemake patches.
"""

from __future__ import annotations


def data_parallel(cfg: dict):
    """Context manager: this stage's :class:`~opgrpo_stages.execution.collectives.DataParallel`
    (its share of the work, gathers, gradient sums); a single process outside any pool."""
    from .distributed import data_parallel as _data_parallel

    return _data_parallel(cfg)


def fault(*parts) -> None:
    """A fault-injection point (``OPGRPO_FAULT``, tests only; ``execution/faults.py``)."""
    from .faults import fault as _fault

    _fault(*parts)


def lend(kind: str, key: tuple, build):
    """A model from this process's resident pool (or ``build()`` outside a stage scope)."""
    from .resident import lend as _lend

    return _lend(kind, key, build)


def stamp(path):
    """(path, mtime, size) of a file that keys a resident model; None for no file."""
    from .resident import stamp as _stamp

    return _stamp(path)


def one_load_at_a_time():
    """Context manager around a model build: the data-parallel ranks of one node build one after
    the other (host memory holds one copy of the weights at a time); a no-op outside a pool."""
    from .ranks import one_load_at_a_time as _one

    return _one()


def training_job(cfg: dict) -> dict:
    """What one training cluster job of the run asks Slurm for (``cluster.py``): ``minutes`` (its
    walltime: init_policy and ``cluster.iterations_per_job`` iterations) and ``mem_mb`` (per node)."""
    from . import cluster

    k = int(cfg["cluster"]["iterations_per_job"])
    train = ("rollout", "score", "buffer_update", "policy_update")
    return {"minutes": k * sum(cluster.runtime_minutes(cfg, s) for s in train) + cluster.runtime_minutes(cfg, "init_policy"),
            "mem_mb": max(cluster.mem_mb(cfg, s) for s in ("rollout", "score", "policy_update"))}
