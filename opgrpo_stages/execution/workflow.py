"""The Snakefile's interface to how stages run (``opgrpo_stages/execution/``): a stage for its rule
(here or on every data-parallel rank), its log, the run's locks, storage pruning, Slurm resources
and the Snakemake patches. Thin functions, each importing what it needs when called (a patched
``logs.rule_log``, as benchmarks/iteration_overhead.py times it, is the one used)."""

from __future__ import annotations


def run_stage(stage: str, fn, cfg: dict, iteration: int, paths: dict, log_path) -> None:
    """``fn(cfg, iteration, **paths)`` for its rule: here, or on every data-parallel rank."""
    from .runner import run_stage as _run_stage

    _run_stage(stage, fn, cfg, iteration, paths, log_path)


def rule_log(path):
    """Context manager: this thread's log records to the rule's log file, in a resident scope."""
    from .logs import rule_log as _rule_log

    return _rule_log(path)


def prune(cfg: dict, iteration: int) -> list[str]:
    """Delete earlier iterations' large files the run's ``storage`` settings do not keep."""
    from .storage import prune as _prune

    return _prune(cfg, iteration)


def install_snakemake_patches(remote_exec: bool) -> None:
    """Every patch of Snakemake internals (``execution/snakemake_patches.py``), after checking the
    installed versions and that each patched internal is there (``verify``): the linear group
    check, one pending scheduler re-evaluation, and inside a cluster job (``remote_exec``) the group's
    stages as threads."""
    from . import snakemake_patches

    snakemake_patches.verify()  # the tested versions, and each patched internal still there: one clear error
    snakemake_patches.install()
    if remote_exec:
        snakemake_patches.run_group_stages_in_threads()


def clear_stale_locks() -> list[str]:
    from .locks import clear_stale_locks as _clear

    return _clear()


def record_lock_owner() -> None:
    from .locks import record_lock_owner as _record

    _record()


def release_lock_owner() -> None:
    from .locks import release_lock_owner as _release

    _release()


def rule_resources(stage: str, cfg_of, multi_node: bool, data_parallel: bool = False) -> dict:
    """Slurm resources of a stage's rule (runtime, memory, GPUs, nodes) as Snakemake callables."""
    from .cluster import rule_resources as _rule_resources

    return _rule_resources(stage, cfg_of, multi_node, data_parallel)
