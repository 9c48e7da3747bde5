"""Entry point of the per-experiment report: one experiment's runs side by side.

Under ``results/<experiment>/`` (paths: ``outputs.outputs_for``):
- ``figures/training_curves.png``: training reward and strict accuracy per iteration (paper Fig. 3).
- ``figures/heldout_geneval.png``: held-out GenEval overall and reward vs iteration (base = 0).
- ``figures/samples_base_vs_trained.png``: the same held-out prompts and noise, base vs last checkpoints.
- ``figures/logp_per_step.png``: per-step log-prob of fresh vs replayed samples, truncation marked (Fig. 2).
- ``figures/clipped_fraction.png``: clipped fraction of fresh and replayed samples per run.
- ``tables/results.csv|md``: GenEval per tag and overall, base vs each run's last checkpoint.
- ``tables/table1.csv|md``: the paper's Table 1: base, each run's intermediate and best checkpoint
  (stage ``final_eval``) on the task metric and Aesthetic, DeQA, ImageReward, PickScore,
  UnifiedReward; a metric that could not run reads "unavailable (<reason>)".
- ``tables/table2.csv|md``: the paper's Table 2 (T2I-CompBench++, the eight categories and the
  paper's average over Color, Shape, 2D/3D-Spatial, Numeracy, Non-Spatial), same rows.
- ``tables/steps_to_target.csv``: for every run with replay, the fraction of its Flow-GRPO
  partner's iterations (same seed, replay fraction 0) it needs to reach that partner's final
  held-out reward (measured points, base at 0), and the same on the training reward of
  dataset-drawn groups (5-iteration average, the first rollout at 0; groups replaying a buffer
  entry are left out: they were chosen for their high reward), each with its status
  (``stats.steps_to_target``: undefined when the partner did not improve or the run reaches the
  target before any update); a summary over seeds (never-reaching seeds counted at 1.0, no mean
  when any seed is undefined) is printed to the log and written under the table.

The seed-aggregated part (headline, ablations, Figs. 2, 3, 6) is ``seeds.py``."""

from __future__ import annotations

import math

from .. import layout as L
from . import figures
from . import tables as T
from .load import heldout_prompts
from .methods import heldout_curve, train_curve
from .stats import censored_fraction, censored_summary, steps_to_target as reach

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def results_table(data):
    """Base and each run's last evaluation: GenEval overall and per tag, gain over base, held-out reward."""
    import pandas as pd

    base = data["base"]
    rows = [{"model": "base", "iteration": 0, "geneval_overall": base["overall"], "gain_vs_base": 0.0,
             "heldout_reward": base["heldout_reward"], **{t: base.get(t, math.nan) for t in TAGS}}]
    for run, d in data["runs"].items():
        k = max(d["evals"])
        e = d["evals"][k]
        rows.append({"model": run, "iteration": k + 1, "geneval_overall": e["overall"],
                     "gain_vs_base": e["overall"] - base["overall"], "heldout_reward": e["heldout_reward"],
                     **{t: e.get(t, math.nan) for t in TAGS}})
    return pd.DataFrame(rows)


def steps_to_target(data):
    """Pairs every replay run with the Flow-GRPO run of the same seed: the (interpolated) iteration
    at which the run's curve first reaches the partner's final value, on the held-out reward
    (measured points, base at 0) and on the training reward of dataset-drawn groups (trailing
    average, the first rollout at 0), with its status and as a fraction of the partner's iterations
    (``stats.censored_fraction``: never reached = 1.0, undefined = nan)."""
    import pandas as pd

    refs = {d["cfg"]["seed"]: r for r, d in data["runs"].items() if d["cfg"]["replay"]["fraction"] == 0}
    rows = []
    for run, d in data["runs"].items():
        ref = refs.get(d["cfg"]["seed"])
        if d["cfg"]["replay"]["fraction"] == 0 or ref is None:
            continue
        n_ref = data["runs"][ref]["cfg"]["train"]["iterations"]
        row = {"run": run, "reference": ref, "seed": d["cfg"]["seed"]}
        hx, hy = heldout_curve(data, ref)
        ox, oy = heldout_curve(data, run)
        tr, to = train_curve(data, ref), train_curve(data, run)
        curves = {"heldout": (hy, ox, oy), "train": (list(tr), list(range(len(to))), list(to))}
        for kind, (ref_y, xs, ys) in curves.items():
            x, status = reach(xs, ys, float(ref_y[-1]), float(ref_y[0]))
            row.update({f"{kind}_target": float(ref_y[-1]), f"{kind}_iterations": x, f"{kind}_status": status,
                        f"{kind}_fraction": censored_fraction(x, status, n_ref)})
        rows.append(row)
    cols = ["run", "reference", "seed"] + [f"{k}_{c}" for k in ("heldout", "train")
                                           for c in ("target", "iterations", "status", "fraction")]
    return pd.DataFrame(rows, columns=cols)


def weight_spread(data):
    """Per run with replayed samples: the sequence weight's extremes over all iterations and its
    mean per-iteration std (item 12 of issue 13: with mean-reduced log-probs it stays near 1)."""
    import pandas as pd

    rows = []
    for run, d in data["runs"].items():
        m = d["metrics"]
        if "weight_std" not in m or m["n_replay"].sum() == 0:
            continue
        has = m["n_replay"] > 0
        rows.append({"run": run, "correction": d["cfg"]["replay"]["correction"],
                     "weight_min": float(m.loc[has, "weight_min"].min()), "weight_max": float(m.loc[has, "weight_max"].max()),
                     "weight_std_mean": float(m.loc[has, "weight_std"].mean())})
    return pd.DataFrame(rows, columns=["run", "correction", "weight_min", "weight_max", "weight_std_mean"])


def headline(speed) -> str:
    """Per replay method, on each reward: how many seeds reach Flow-GRPO's final value and the mean
    fraction of its iterations over all seeds (``stats.censored_summary``), then each seed's."""
    if speed.empty:
        return "no OP-GRPO/Flow-GRPO pair in this experiment"
    lines = []
    for base_name, g in speed.groupby(speed["run"].str.replace(r"-seed\d+$", "", regex=True)):
        for kind in ("heldout", "train"):
            per = ", ".join(f"{x:.2f}" if s == "reached" else s for x, s in zip(g[f"{kind}_fraction"], g[f"{kind}_status"]))
            lines.append(f"{base_name}: {kind} reward: {censored_summary(list(g[f'{kind}_fraction']), list(g[f'{kind}_status']))}"
                         f" (per seed: {per})")
    return "\n".join(lines)


def clipped_shares(data):
    """(runs, mean clipped fraction of fresh samples, of replayed samples (0 without replay)) per run,
    means over iterations ignoring nan."""
    import numpy as np

    names = list(data["runs"])
    fr = [float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_fresh"])) for r in names]
    rp = [float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_replay"])) if data["runs"][r]["metrics"]["n_replay"].sum()
          else 0.0 for r in names]
    return names, fr, rp


def write(cfg: dict, runs: list[str], data, out: dict) -> dict:
    """Every per-experiment figure and table (module doc) from the loaded ``data``."""
    figures.training_curves(data, out["curves"])
    figures.heldout(data, out["heldout"])
    panels = [("base", L.eval_grid("base", 0))] + [
        (f"{run} (iteration {max(d['evals']) + 1})", L.eval_grid(run, max(d["evals"]))) for run, d in data["runs"].items()
    ]
    figures.samples_grid(panels, heldout_prompts(cfg.get("report", {}).get("grid_prompts", 12)), out["grid"])
    figures.logp_per_step(data, out["logp"])
    names, fr, rp = clipped_shares(data)
    figures.clipped_fraction(data, names, fr, rp, out["clip"], n_runs=len(runs))

    table = results_table(data)
    T.write_csv(table, out["csv"], float_format="%.4f")
    speed = steps_to_target(data)
    T.write_csv(speed, out["speed"], float_format="%.4f")
    head = headline(speed)
    clip_lines = "\n".join(f"| {r} | {data['runs'][r]['cfg']['replay']['correction']} | {f:.3f} | {p:.3f} |"
                           for r, f, p in zip(names, fr, rp))
    T.write_md(out["md"], T.markdown(table) + "\n## Steps to Flow-GRPO's final reward\n\n" + head + "\n\n"
               + (T.markdown(speed) if not speed.empty else "") + "\n## Clipped fraction\n\n"
               "| run | correction | fresh | replayed |\n|---|---|---|---|\n" + clip_lines + "\n"
               + T.weight_section(weight_spread(data)))
    t1, t2 = T.write_paper_tables(cfg, runs, out)
    return {"table": table, "speed": speed, "headline_text": head, "table1": t1, "table2": t2}
