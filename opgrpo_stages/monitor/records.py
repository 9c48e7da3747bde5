"""Per-iteration records: the numbers a person watches while a run trains, read from the tables the
stages already wrote (formats/tables.py), never computed by a stage for this purpose.

A record is ``{tag: float}`` at one step. Steps count the policy updates behind the numbers, as the
report's x axis does: iteration k's training record is at step k + 1, the held-out evaluation of the
policy after iteration k at step k + 1, the base model's at step 0. NaN values (no replayed sample in
the iteration, an empty buffer) are left out rather than drawn as gaps.

Training (``train_record``):
  reward/all, reward/fresh, reward/replayed      mean reward of all / fresh / replayed samples (rewards.parquet)
  reward/dataset_drawn                           of the groups whose prompt came from the prompt set, not the buffer
  reward/strict_accuracy                         GenEval strict 0/1 (when the geneval reward is a term)
  reward_terms/<term>                            every other column of rewards.parquet
  update/<metric>                                update_metrics.parquet: loss, kl, approx_kl, clipfrac,
                                                 clipfrac_fresh, clipfrac_replay, grad_norm, adv_abs_mean, ...
  replay/n_replay, replay/weight_{std,min,max,ess,mean}   sequence weights of replayed samples (update_metrics)
  replay/buffer_size, replay/buffer_mean_reward  the buffer after the iteration (buffer.parquet; stored, decayed reward)
  groups/degenerate_share(_fresh)                share of groups whose rewards (of fresh samples) all tie
  seconds/<stage>                                Snakemake's benchmark file of rollout, score, policy_update
Held-out (``heldout_record``): heldout/geneval_overall, heldout/geneval_<tag>, heldout/reward, and the
evaluation's sample grid (eval/iter_<k>.png).

Not available, because no table holds them: per-step log-prob curves are in update_metrics but are
a shape over steps, not a scalar per iteration (the report draws them); evaluate has no benchmark
file, so its seconds are missing (buffer_update's, a fraction of a second, is read by the report only).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .. import layout as L
from ..report import stats  # the report's definitions: the curves and the report agree

# update_metrics columns shown under replay/ (the rest under update/); per-step log-probs are left out
_REPLAY_COLS = ("n_replay", "weight_mean", "weight_std", "weight_min", "weight_max", "weight_ess", "weight_capped")
_SKIP_COLS = ("iteration", "reward_mean", "reward_std")  # the step; the rewards table gives the rewards
BENCHMARKED = ("rollout", "score", "policy_update")  # rules with a `benchmark:` file (Snakefile)


def step_of(run: str, k: int) -> int:
    return 0 if run == "base" else int(k) + 1


def train_inputs(run: str, k: int, last: bool = False) -> dict:
    """The tables a training record reads (the Snakefile's inputs of its rule). The buffer after the
    run's ``last`` iteration is no stage's input, so it is never written and its record has none."""
    out = {"samples": L.samples(run, k), "rewards": L.rewards(run, k), "metrics": L.metrics(run, k)}
    if not last:
        out["buffer_table"] = L.buffer(run, k)[1]
    return out


def heldout_inputs(run: str, k: int) -> dict:
    return {"table": L.eval_table(run, k), "grid": L.eval_grid(run, k)}


def benchmark_path(run: str, k: int, stage: str) -> str:
    return L.benchmark(run, k, stage)


def stage_seconds(run: str, k: int) -> dict[str, float]:
    """Wall seconds of the iteration's benchmarked stages (Snakemake's benchmark files; a stage run
    outside Snakemake, by ``opgrpo <stage>``, has none and is left out)."""
    from ..formats.benchmark import seconds

    out = {}
    for stage in BENCHMARKED:
        p = benchmark_path(run, k, stage)
        if Path(p).exists():
            try:
                out[stage] = seconds(p)
            except ValueError:  # a benchmark file is a log, not an artifact: an unreadable one is skipped
                continue
    return out


def _mean(values) -> float:
    return float(values.mean()) if len(values) else math.nan


def train_record(run: str, k: int, paths: dict | None = None) -> dict[str, float]:
    """Iteration k's training record (tags above) from its tables."""
    from ..formats import tables

    p = paths or train_inputs(run, k)
    smp = tables.read(p["samples"], "samples")
    rew = tables.read(p["rewards"], "rewards")
    tables.check_aligned(p["samples"], smp, p["rewards"], rew)
    met = tables.read(p["metrics"], "update_metrics").iloc[0]
    buf = tables.read(p["buffer_table"], "buffer") if "buffer_table" in p else None

    r = rew["reward"].to_numpy(dtype=float)
    source = smp["source"].to_numpy()
    rec = {"reward/all": _mean(r), "reward/fresh": _mean(r[source == "fresh"]),
           "reward/replayed": _mean(r[source == "replay"]),
           "reward/dataset_drawn": stats.dataset_drawn_mean(smp["group"], source, r)}
    for col in rew.columns:
        if col in ("sample_id", "reward"):
            continue
        tag = "reward/strict_accuracy" if col == "geneval_strict" else f"reward_terms/{col}"
        rec[tag] = _mean(rew[col].to_numpy(dtype=float))
    for col, v in met.items():
        if col in _SKIP_COLS or col.startswith("logp_") or col.startswith("train_"):
            continue  # train_<term>: the same means as reward_terms/ (update_metrics repeats them)
        rec[f"replay/{col}" if col in _REPLAY_COLS else f"update/{col}"] = float(v)
    if int(met.get("n_replay", 0)) == 0:  # the weights are placeholders (1.0) without replayed samples
        for col in _REPLAY_COLS[1:]:
            rec.pop(f"replay/{col}", None)
    if buf is not None:
        rec["replay/buffer_size"] = float(len(buf))
        rec["replay/buffer_mean_reward"] = _mean(buf["reward"].to_numpy(dtype=float))
    rec["groups/degenerate_share"], rec["groups/degenerate_share_fresh"] = stats.degenerate_shares(
        smp["group"], smp["source"], r)
    for stage, s in stage_seconds(run, k).items():
        rec[f"seconds/{stage}"] = s
    return {t: v for t, v in rec.items() if math.isfinite(v)}


def heldout_record(run: str, k: int, paths: dict | None = None) -> dict[str, float]:
    """The held-out evaluation of the policy after iteration k (run 'base': the base model)."""
    from ..formats import tables
    from ..geneval import summarize

    p = paths or heldout_inputs(run, k)
    df = tables.read(p["table"], "eval")
    summary = summarize(list(df["tag"]), list(df["correct"]))
    rec = {f"heldout/geneval_{t}": v for t, v in summary.items()}
    rec["heldout/reward"] = float(df["reward"].mean())
    return {t: v for t, v in rec.items() if math.isfinite(v)}


def finished_at(path) -> float:
    """When a table was written (its mtime): the wall time of the record's points."""
    return os.stat(path).st_mtime
