"""Entry point of the `speedup` experiment's report (issue 21): the pre-registered analysis of
docs/speedup.md on the runs, and the files its numbers come from.

The experiment has two arms, Flow-GRPO (no replay) and OP-GRPO (replay), each run once per seed;
seed k of one arm is paired with seed k of the other. Curves are in iterations trained: t = 0 is
the base model (its first held-out noise, the images every run's single-noise evaluation draws:
``load.base_samples_per_prompt``), then the evaluation of the policy after iteration k at k + 1.
Measured points only: no smoothing across evaluations.

Outputs (``outputs.speedup_outputs``):
- ``tables/speedup.md``: R, its BCa interval, the decision, the guard, the secondaries in the
  design's order, seeds per arm (``tables.speedup_markdown``).
- ``tables/heldout_curves.csv``: run x evaluation: held-out reward and strict GenEval (base rows at
  iteration 0).
- ``tables/per_iteration.csv``: run x iteration (the first rollout is iteration 0): training reward
  of dataset-drawn groups (the secondary), of buffer-drawn groups, of fresh samples, and the wall
  seconds of each benchmarked stage and their sum.
- ``tables/per_run.csv``: run: the per-seed values the analysis uses (iterations to L, gain at T,
  mean held-out reward over the evaluations, strict GenEval at T, mean dataset-drawn training
  reward, seconds per iteration).
- ``figures/speedup_heldout.png``: both arms' held-out curves.
"""

from __future__ import annotations

import numpy as np

from . import figures
from . import tables as T
from .methods import flowgrpo_method, methods, paired, reference_method, seed_of
from .speedup_stats import analyse, hitting_times


def arms(data) -> tuple[str, str, list[str], list[str]]:
    """(Flow-GRPO method, OP-GRPO method, their runs paired by seed). The experiment must hold
    exactly these two methods, every seed in both."""
    groups = methods(data)
    flow, op = flowgrpo_method(data, groups), reference_method(data, groups)
    if flow is None or op is None or len(groups) != 2:
        raise ValueError(f"the speedup report compares two methods, one without replay and one with: got "
                         f"{ {g: len(rs) for g, rs in groups.items()} }")
    fr, orr = paired(data, flow, op, groups)
    if len(fr) != len(groups[flow]) or len(orr) != len(groups[op]):
        raise ValueError(f"the speedup report pairs runs by seed: {flow} seeds "
                         f"{sorted(seed_of(data, r) for r in groups[flow])}, {op} seeds "
                         f"{sorted(seed_of(data, r) for r in groups[op])}; expected the same seeds")
    return flow, op, fr, orr


def curve(data, run) -> tuple[list[int], list[float], list[float]]:
    """(iterations trained, held-out reward, strict GenEval): the base at 0, then each evaluation."""
    ev = data["runs"][run]["evals"]
    ks = sorted(ev)
    return ([0] + [k + 1 for k in ks], [data["base"]["heldout_reward"]] + [ev[k]["heldout_reward"] for k in ks],
            [data["base"]["overall"]] + [ev[k]["overall"] for k in ks])


def curves(data, runs) -> tuple[np.ndarray, np.ndarray]:
    """(xs, held-out reward array (runs, points)); every run must be evaluated at the same iterations."""
    xs = curve(data, runs[0])[0]
    ys = []
    for r in runs:
        x, y, _ = curve(data, r)
        if x != xs:
            raise ValueError(f"runs {runs[0]} and {r} are evaluated at different iterations ({xs} vs {x}); "
                             f"the speedup report compares curves point by point")
        ys.append(y)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def heldout_table(data, arm_of):
    import pandas as pd

    rows = []
    for run, arm in arm_of.items():
        for x, y, g in zip(*curve(data, run)):
            rows.append({"run": run, "arm": arm, "seed": seed_of(data, run), "iteration": x,
                         "heldout_reward": y, "geneval_strict": g, "base": x == 0})
    return pd.DataFrame(rows)


def per_iteration_table(data, arm_of, seconds):
    import pandas as pd

    rows = []
    for run, arm in arm_of.items():
        m = data["runs"][run]["metrics"]
        for i in range(len(m)):
            r = m.iloc[i]
            rows.append({"run": run, "arm": arm, "seed": seed_of(data, run), "iteration": int(r["iteration"]),
                         "reward_dataset_drawn": float(r["reward_dataset_drawn"]),
                         "reward_fresh": float(r["reward_fresh"]), "n_replay": int(r["n_replay"])})
    df = pd.DataFrame(rows)
    return df.merge(seconds, on=["run", "iteration"], how="left", validate="one_to_one")


def write(cfg: dict, runs: list[str], data, seconds, out: dict) -> dict:
    """The analysis and every output (module doc). ``seconds``: ``load.stage_seconds`` of ``runs``."""
    import pandas as pd

    from ..seeding import numpy_rng

    flow, op, fr, orr = arms(data)
    arm_of = {**{r: flow for r in fr}, **{r: op for r in orr}}
    xs, yf = curves(data, fr + orr)
    yf, yo = yf[: len(fr)], yf[len(fr):]
    held = heldout_table(data, arm_of)
    per_it = per_iteration_table(data, arm_of, seconds)

    def per_seed(runs_, col):
        return np.array([per_it.loc[per_it["run"] == r, col].mean() for r in runs_])

    strict = {r: curve(data, r)[2][-1] for r in fr + orr}
    res = analyse(xs, yf, yo, numpy_rng(cfg.get("seed", 0), "report", 0, "speedup"),
                  strict_flow=[strict[r] for r in fr], strict_op=[strict[r] for r in orr],
                  train_flow=per_seed(fr, "reward_dataset_drawn"), train_op=per_seed(orr, "reward_dataset_drawn"),
                  secs_flow=per_seed(fr, "seconds"), secs_op=per_seed(orr, "seconds"))
    hit = hitting_times(xs, np.concatenate([yf, yo]), res.target)
    per_run = pd.DataFrame({
        "run": fr + orr, "arm": [arm_of[r] for r in fr + orr], "seed": [seed_of(data, r) for r in fr + orr],
        "iterations_to_L": hit, "reached_L": np.concatenate([yf, yo]).max(axis=1) >= res.target,
        "gain_at_T": np.concatenate([yf, yo])[:, -1] - np.concatenate([yf, yo])[:, 0],
        "heldout_mean_over_evaluations": np.concatenate([yf, yo])[:, 1:].mean(axis=1),
        "geneval_strict_at_T": [strict[r] for r in fr + orr],
        "train_reward_dataset_drawn": per_seed(fr + orr, "reward_dataset_drawn"),
        "seconds_per_iteration": per_seed(fr + orr, "seconds")})
    T.write_csv(held, out["heldout_curves"], float_format="%.6f")
    T.write_csv(per_it, out["per_iteration"], float_format="%.6f")
    T.write_csv(per_run, out["per_run"], float_format="%.6f")
    T.write_md(out["speedup_md"], T.speedup_markdown(res, {flow: len(fr), op: len(orr)},
                                                          f"{data['base'].get('images', '?')} held-out images"))
    rc = data["runs"][fr[0]]["cfg"]
    figures.speedup_heldout(xs, {flow: yf, op: yo}, res.base, res.target, figures.reward_label(rc),
                            out["speedup_fig"])
    return {"result": res, "heldout_curves": held, "per_iteration": per_it, "per_run": per_run}
