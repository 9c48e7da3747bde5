"""Entry point of the report's seed-aggregated part (issue 14): the paper's claims with 95%
intervals over seeds.

Runs named ``<name>-seed<k>`` are repeats of ``<name>`` (a "method", ``methods.py``). Every
interval is a percentile bootstrap over seeds (``stats.bootstrap``: ``B`` resamples of the seeds
with replacement, fixed RNG), paired by seed where two methods are compared (OP-GRPO and
Flow-GRPO of the same seed share the base, the prompts and the noise roots). With one seed the
interval is absent (NaN).

Outputs (``outputs.outputs_for``):
- ``tables/training_curves.csv``: every run, every iteration: training reward of fresh samples,
  strict accuracy, the degenerate-group shares, replayed samples, clipped fractions.
- ``tables/degenerate_groups.csv``: per method, the share of groups whose rewards all tie (all
  iterations, last 10), with the same share over fresh samples only.
- ``tables/headline.csv|md``: the paper's claims side by side with the measurement: fraction of
  Flow-GRPO's iterations OP-GRPO needs to reach Flow-GRPO's final smoothed held-out and training
  reward (paper 34.2% image, 30.1% video); clipped share of replayed samples, per-step substitution
  vs sequence correction (paper >40% vs 11.8%).
- ``tables/ablations.csv|md``: final rewards of each method.
- ``tables/logp_cliff.csv``: Fig. 2's numbers.
- ``figures/fig2_logp_cliff.png``, ``fig3_curves.png``, ``fig6a_ablations.png``,
  ``fig6b_replay_fraction.png``.

The random stream is drawn in a fixed order (headline, ablations, degenerate groups, Fig. 2's
table, then Figs. 3, 6a, 6b), so every interval is reproducible.
"""

from __future__ import annotations

import math

import numpy as np

from . import figures
from . import tables as T
from .methods import (cliff_method, differs_only_in, figure_groups, flowgrpo_method, heldout_array, method_of,
                      methods, paired, reference_method, train_curve)
from .stats import bootstrap, crossing_fraction, smooth

PAPER = {"heldout": "34.2% image / 30.1% video (steps to Flow-GRPO's final performance)",
         "train": "34.2% image / 30.1% video (steps to Flow-GRPO's final performance)",
         "clip_per_step": "over 40%", "clip_sequence": "11.8%"}


def _rng(cfg):
    from ..seeding import numpy_rng

    return numpy_rng(cfg.get("seed", 0), "report", 0, "bootstrap")


def training_curves(data):
    """Long table: one row per run and iteration."""
    import pandas as pd

    rows = []
    for run, d in data["runs"].items():
        m = d["metrics"]
        for i in range(len(m)):
            r = m.iloc[i]
            rows.append({"run": run, "method": method_of(run), "seed": d["cfg"]["seed"], "iteration": int(r["iteration"]),
                         "reward_fresh": float(r["reward_fresh"]),
                         "strict_accuracy": float(r.get("train_geneval_strict", math.nan)),
                         "degenerate_share": float(r["degenerate_share"]),
                         "degenerate_share_fresh": float(r["degenerate_share_fresh"]),
                         "n_replay": int(r["n_replay"]), "clipfrac_fresh": float(r["clipfrac_fresh"]),
                         "clipfrac_replay": float(r["clipfrac_replay"])})
    return pd.DataFrame(rows)


def headline_rows(data, rng):
    """The paper's claims per method with replay: steps-to-target on Flow-GRPO's final smoothed
    held-out and training reward (seed-mean curves, bootstrap paired by seed, per seed alone too),
    then the clipped share of replayed steps of OP-GRPO and of its per-step-correction variant."""
    import pandas as pd

    groups = methods(data)
    ref = flowgrpo_method(data, groups)
    op = reference_method(data, groups)
    rows = []
    for g, runs in groups.items():
        if ref is None or g == ref or data["runs"][runs[0]]["cfg"]["replay"]["fraction"] == 0:
            continue
        paper_note = "n/a (ablation)"
        if differs_only_in(data, groups, op, g, ("fraction",)) and data["runs"][runs[0]]["cfg"]["replay"]["fraction"] == 0.05:
            paper_note = "OP-GRPO-5: only 23.1% faster convergence"
        refs, mine = paired(data, ref, g, groups)
        if not mine:
            continue
        n_ref = data["runs"][refs[0]]["cfg"]["train"]["iterations"]
        for kind in ("heldout", "train"):
            if kind == "heldout":
                xr, _ = heldout_array(data, refs[0])
                xm, _ = heldout_array(data, mine[0])
                cr = np.array([heldout_array(data, r)[1] for r in refs])
                cm = np.array([heldout_array(data, r)[1] for r in mine])
            else:
                cr = np.array([train_curve(data, r) for r in refs])
                cm = np.array([train_curve(data, r) for r in mine])
                xr = xm = list(range(1, cr.shape[1] + 1))
            both = np.concatenate([cr, cm], axis=1)  # resample seed pairs together
            k = cr.shape[1]
            stat = lambda v, k=k, xr=xr, xm=xm: crossing_fraction(v[:, :k], v[:, k:], xr, xm, n_ref)  # noqa: E731
            point, lo, hi = bootstrap(both, rng, stat)
            per_seed = [crossing_fraction(cr[i:i + 1], cm[i:i + 1], xr, xm, n_ref) for i in range(len(mine))]
            rows.append({"claim": f"iterations to Flow-GRPO's final smoothed {kind} reward (fraction of Flow-GRPO's)",
                         "method": g, "value": float(point), "ci_low": float(lo), "ci_high": float(hi),
                         "seeds": len(mine), "seeds_reaching": int(sum(x != math.inf for x in per_seed)),
                         "per_seed": ", ".join("not reached" if x == math.inf else f"{x:.2f}" for x in per_seed),
                         "paper": PAPER[kind] if g == op else paper_note})
    for g, runs in groups.items():  # OP-GRPO and the variant that differs from it in the correction only
        c = data["runs"][runs[0]]["cfg"]["replay"]
        if op is None or not (g == op or (differs_only_in(data, groups, op, g, ("correction",))
                                          and c["correction"] == "per_step")):
            continue
        per = np.array([float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_replay"])) for r in runs])
        point, lo, hi = bootstrap(per, rng)
        rows.append({"claim": f"clipped share of replayed samples' trained steps ({c['correction']} correction)",
                     "method": g, "value": float(point), "ci_low": float(lo), "ci_high": float(hi), "seeds": len(runs),
                     "seeds_reaching": math.nan, "per_seed": ", ".join(f"{x:.3f}" for x in per),
                     "paper": PAPER["clip_per_step" if c["correction"] == "per_step" else "clip_sequence"]})
    return pd.DataFrame(rows, columns=["claim", "method", "value", "ci_low", "ci_high", "seeds", "seeds_reaching",
                                       "per_seed", "paper"])


def ablation_rows(data, rng):
    """Per method: final held-out reward and GenEval, final smoothed training reward (fresh
    samples), clipped share of replayed steps, degenerate-group share; mean [95% interval]."""
    import pandas as pd

    rows = []
    for g, runs in methods(data).items():
        d0 = data["runs"][runs[0]]["cfg"]
        row = {"method": g, "seeds": len(runs), "replay_fraction": d0["replay"]["fraction"],
               "correction": d0["replay"]["correction"], "truncation": d0["replay"]["truncation"],
               "regenerate": d0["replay"]["regenerate"]}
        vals = {
            "final_heldout_reward": [data["runs"][r]["evals"][max(data["runs"][r]["evals"])]["heldout_reward"] for r in runs],
            "final_heldout_geneval": [data["runs"][r]["evals"][max(data["runs"][r]["evals"])]["overall"] for r in runs],
            "final_train_reward": [float(smooth(data["runs"][r]["metrics"]["reward_fresh"], 5)[-1]) for r in runs],
            "degenerate_share": [float(np.mean(data["runs"][r]["metrics"]["degenerate_share"])) for r in runs],
        }
        if d0["replay"]["fraction"] > 0:
            vals["clipfrac_replay"] = [float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_replay"])) for r in runs]
        for k, v in vals.items():
            p, lo, hi = bootstrap(v, rng)
            row[k], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = float(p), float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def degenerate_rows(data, rng):
    """Per method: mean degenerate-group share (all groups; fresh samples only) over all iterations
    and over the last 10; mean [95% interval] over seeds."""
    import pandas as pd

    rows = []
    for g, runs in methods(data).items():
        row = {"method": g, "seeds": len(runs)}
        for col in ("degenerate_share", "degenerate_share_fresh"):
            for label, sl in (("", slice(None)), ("_last10", slice(-10, None))):
                v = [float(np.mean(np.asarray(data["runs"][r]["metrics"][col])[sl])) for r in runs]
                p, lo, hi = bootstrap(v, rng)
                row[col + label], row[f"{col}{label}_ci_low"], row[f"{col}{label}_ci_high"] = float(p), float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def logp_cliff(data, rng):
    """Per denoising step, mean over iterations with replayed samples: log-prob under the current
    policy of fresh and of replayed trajectories, and of replayed ones under their behaviour
    policy; mean over seeds [95% interval]."""
    import pandas as pd

    groups = methods(data)
    g = cliff_method(data, groups)
    if g is None:
        return None, pd.DataFrame()
    runs = groups[g]
    s = data["runs"][runs[0]]["cfg"]["sampling"]["num_steps"]
    cols = {"fresh": "logp_fresh_s{}", "replay": "logp_replay_s{}", "replay_behavior": "logp_replay_behavior_s{}"}
    per = {k: [] for k in cols}
    for r in runs:
        m = data["runs"][r]["metrics"]
        has = m["n_replay"] > 0
        for k, c in cols.items():
            per[k].append([float(m.loc[has, c.format(j)].mean()) for j in range(s)])
    per["gap"] = list(np.asarray(per["replay"]) - np.asarray(per["fresh"]))
    rows = []
    stats = {k: bootstrap(np.asarray(v), rng) for k, v in per.items()}
    for j in range(s):
        row = {"method": g, "step": j, "seeds": len(runs)}
        for k, (p, lo, hi) in stats.items():
            row[k], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = float(p[j]), float(lo[j]), float(hi[j])
        rows.append(row)
    return g, pd.DataFrame(rows)


def write(cfg: dict, data, out: dict) -> dict:
    """Every seed-aggregated table and figure of issue 14 (module doc)."""
    import pandas as pd

    rng = _rng(cfg)
    curves = training_curves(data)
    head = headline_rows(data, rng)
    abl = ablation_rows(data, rng)
    deg = degenerate_rows(data, rng)
    cliff_g, cliff = logp_cliff(data, rng)
    for df, key in ((curves, "training_curves"), (head, "headline_csv"), (abl, "ablations_csv"),
                    (deg, "degenerate"), (cliff, "logp_cliff")):
        T.write_csv(df, out[key], float_format="%.4f")

    pretty = [{"claim": r["claim"], "method": r["method"],
               "measured (95% interval over seeds)": T.fmt_interval(r["value"], r["ci_low"], r["ci_high"], pct=True),
               "seeds": (str(int(r["seeds"])) if r["seeds_reaching"] != r["seeds_reaching"]
                         else f"{int(r['seeds_reaching'])}/{int(r['seeds'])} reach"),
               "per seed": r["per_seed"], "paper": r["paper"]} for _, r in head.iterrows()]
    abl_pretty = pd.DataFrame([{"method": r["method"], "seeds": r["seeds"],
                                **{k: T.fmt_interval(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"])
                                   for k in ("final_heldout_reward", "final_heldout_geneval", "final_train_reward",
                                             "degenerate_share", "clipfrac_replay") if k in r and r[k] == r[k]}}
                               for _, r in abl.iterrows()]).fillna("")
    deg_pretty = pd.DataFrame([{"method": r["method"], "seeds": r["seeds"],
                                **{k: T.fmt_interval(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"])
                                   for k in ("degenerate_share", "degenerate_share_last10", "degenerate_share_fresh",
                                             "degenerate_share_fresh_last10")}} for _, r in deg.iterrows()])
    note = ("Intervals: percentile bootstrap over seeds (10,000 resamples; paired by seed for the steps-to-target "
            "rows, computed on the seed-mean curves: 'not reached' = the resampled mean curve never reaches "
            "Flow-GRPO's final smoothed value; 0% = that value is not above the curve's start, e.g. Flow-GRPO "
            "ended below the base model). Degenerate group: every reward in the group equal (no advantage); "
            "`_fresh`: over the group's fresh samples only (what on-policy sampling alone gives).\n")
    T.write_md(out["headline_md"], "# Headline: the paper's claims at this scale\n\n" + T.markdown(pd.DataFrame(pretty))
               + "\n" + note + "\n## Degenerate groups\n\n" + T.markdown(deg_pretty))
    T.write_md(out["ablations_md"], "# Ablations: final values, mean [95% interval] over seeds\n\n" + T.markdown(abl_pretty)
               + "\nheld-out: last evaluation; training reward: fresh samples, 5-iteration average at the last "
                 "iteration; clipfrac_replay: mean over iterations of the clipped share of replayed samples' trained steps.\n")

    fig3, fig6a, fig6b = figure_groups(data)
    figures.curve_panels(data, fig3, rng, "Fig. 3: Flow-GRPO vs OP-GRPO", out["fig3"])
    figures.curve_panels(data, fig6a, rng, "Fig. 6a: ablations", out["fig6a"])
    figures.curve_panels(data, fig6b, rng, "Fig. 6b: replay fraction", out["fig6b"])
    figures.logp_cliff(data, cliff_g, cliff, out["fig2"])
    return {"headline": head, "ablations": abl, "degenerate": deg, "logp_cliff": cliff, "curves": curves}
