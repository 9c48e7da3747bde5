"""How the Snakefile runs one stage: in this process under its rule's log, or on every resident
data-parallel rank (``execution/ranks.py``) when the run has several."""

from __future__ import annotations

from . import logs, ranks


def run_stage(stage: str, fn, cfg: dict, iteration: int, paths: dict, log_path) -> None:
    """A stage for its rule: ``fn(cfg, iteration, **paths)`` in this process; with
    ``distributed.nodes`` x ``distributed.processes`` > 1 and a data-parallel stage, on every
    rank of this process's resident ranks (``execution/ranks.py``), this process being rank 0."""
    if stage in ranks.STAGES and ranks.world_size(cfg) > 1:
        ranks.run(stage, fn, cfg, iteration, paths, log_path)
        return
    with logs.rule_log(log_path):  # looked up at call time: benchmarks/iteration_overhead.py times it
        fn(cfg, iteration, **paths)
