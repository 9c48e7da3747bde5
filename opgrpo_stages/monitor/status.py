"""``opgrpo status``: where each run stands, read from the files alone (no Snakemake needed).

An iteration is finished when its ``update_metrics.parquet`` exists (policy_update's last output,
never pruned). For the next iteration it lists which stage outputs exist already.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as C
from .. import layout as L

_STAGES = (("rollout", L.samples), ("score", L.rewards), ("buffer_update", lambda r, k: L.buffer(r, k)[1]),
           ("policy_update", L.metrics))


def run_status(cfg: dict) -> str:
    run, n = cfg["run"], cfg["train"]["iterations"]
    done = [k for k in range(n) if Path(L.metrics(run, k)).exists()]
    last = max(done) if done else -1
    head = f"{run}: {last + 1}/{n} iterations finished"
    if last >= 0:
        head += f" (current: iteration {last}, {L.iter_dir(run, last)})"
    if len(done) != last + 1:
        missing = sorted(set(range(last + 1)) - set(done))
        head += f"; iterations without metrics: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
    if last + 1 < n:
        nxt = last + 1
        have = [name for name, path in _STAGES if Path(path(run, nxt)).exists()]
        head += f"; next: iteration {nxt}, " + (f"done: {', '.join(have)}" if have else "not started")
    evals = [k for k in L.eval_iterations(cfg) if Path(L.eval_table(run, k)).exists()]
    head += f"; evaluated: {len(evals)}/{len(L.eval_iterations(cfg))}"
    return head


def status(cfg_all: dict, runs: list[str] | None = None) -> str:
    """One line per run of the (seed-expanded) config."""
    lines = []
    for run in runs or list(cfg_all["runs"]):
        lines.append(run_status(C.resolve_run(cfg_all, run)))
    return "\n".join(lines)
