"""Disk: pruning old iterations' trajectories and images (``storage`` in the config).

With ``storage.prune`` on, the rollout rule of iteration k deletes ``trajectories.safetensors``
and ``images.safetensors`` of every earlier iteration j that is neither among the last
``keep_last`` (j > k - keep_last) nor a ``keep_every`` one ((j + 1) % keep_every == 0).
With ``storage.prune_states`` also on, it deletes the same iterations' ``policy``,
``optimizer`` and ``buffer.safetensors`` too, except for j = k - 1 (the state iteration k
starts from) and the evaluated iterations (``eval.every``; evaluation may still be pending).
The Parquet tables (samples, rewards, buffer table, update metrics) are never pruned: the
report reads them.

Why this is safe: by the time iteration k samples, everything that reads those files (score,
buffer_update and policy_update of j) has finished, since rollout k needs the policy and buffer
of k-1. Nothing else reads them: resume needs only the policy, optimizer and buffer of the last
finished iteration, and the report reads the Parquet tables. The state of iteration j is read
by iteration j + 1 only (and by its evaluation, never pruned). Snakemake does not regenerate a
missing intermediate file whose consumers are up to date; it does regenerate it, identically,
if a consumer must rerun (``snakemake -f`` on a pruned iteration's stage).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import layout as L



def kept(cfg: dict, j: int, current: int) -> bool:
    sc = cfg["storage"]
    every = sc["keep_every"]
    return j > current - sc["keep_last"] or bool(every and (j + 1) % every == 0)


def prune(cfg: dict, current: int) -> list[str]:
    """Delete the pruned files of iterations before ``current``; returns the paths removed."""
    if not cfg["storage"]["prune"]:
        return []
    removed = []
    evaluated = set(L.eval_iterations(cfg))
    for j in range(current):
        if kept(cfg, j, current):
            continue
        run = cfg["run"]
        files = [L.trajectories(run, j), L.images(run, j)]
        if cfg["storage"]["prune_states"] and j < current - 1 and j not in evaluated:
            files += [L.policy(run, j), L.optimizer(run, j), L.buffer(run, j)[0]]
        for f in files:
            p = Path(f)
            if p.exists():
                p.unlink()
                removed.append(str(p))
    if removed:
        logging.getLogger("opgrpo").info("storage.prune: removed %s", ", ".join(removed))
    return removed
