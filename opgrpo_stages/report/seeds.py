"""Entry point of the report's seed-aggregated part (issue 14): the paper's claims with 95%
intervals over seeds.

Runs named ``<name>-seed<k>`` are repeats of ``<name>`` (a "method", ``methods.py``). Intervals
are 95% and say their method and n in the column ``interval``: a Student-t interval over seeds for
means (``stats.t_interval``; paired by seed for differences between methods), a BCa bootstrap over
seed pairs (``stats.bca``, fixed RNG) for steps-to-target, whose distribution is not normal. With
one seed there is no interval (NaN). Never a percentile bootstrap: over 5 seeds it covers ~85%.

Outputs (``outputs.outputs_for``):
- ``tables/training_curves.csv``: every run, every iteration: training reward of fresh samples,
  strict accuracy, the degenerate-group shares, replayed samples, clipped fractions.
- ``tables/degenerate_groups.csv``: per method, the share of groups whose rewards all tie (all
  iterations, last 10), with the same share over fresh samples only.
- ``tables/headline.csv|md``: the paper's claims side by side with the measurement: fraction of
  Flow-GRPO's iterations OP-GRPO needs to reach Flow-GRPO's final held-out reward (measured
  points, base at 0) and final training reward of dataset-drawn groups (paper 34.2% image, 30.1%
  video), "undefined" when Flow-GRPO did not improve or the target is reached before any update;
  clipped share of replayed samples, per-step substitution vs sequence correction (paper >40% vs
  11.8%).
- ``tables/ablations.csv|md``: final rewards of each method.
- ``tables/ablation_differences.csv``: Fig. 6's numbers: each method minus OP-GRPO, paired by seed.
- ``tables/logp_cliff.csv``: Fig. 2's numbers (per step: log-probs, and the log ratio of replayed
  samples under the current minus the behaviour policy).
- ``figures/fig2_logp_cliff.png``, ``fig3_curves.png``, ``fig6a_ablations.png``,
  ``fig6b_replay_fraction.png``.

The random stream (BCa only) is drawn in the headline's row order, so every interval is reproducible.
"""

from __future__ import annotations

import math

import numpy as np

from . import figures
from . import tables as T
from .methods import (TRAIN_WINDOW, cliff_method, differs_only_in, figure_groups, flowgrpo_method, heldout_array,
                      method_of, methods, paired, reference_method, train_curve)
from .stats import (NOT_REACHED, REACHED, bca, censored_fraction, steps_to_target, t_interval)

PAPER = {"heldout": "34.2% image / 30.1% video (steps to Flow-GRPO's final performance)",
         "train": "34.2% image / 30.1% video (steps to Flow-GRPO's final performance)",
         "clip_per_step": "over 40%", "clip_sequence": "11.8%"}


def t_label(n: int, paired: bool = False) -> str:
    return f"95% {'paired ' if paired else ''}t-interval over {n} seeds" if n > 1 else "none (1 seed)"


def t_mean(values):
    """(mean, low, high, label): 95% Student-t interval over seeds (nan bounds below 2)."""
    m, lo, hi, n = t_interval(values)
    return m, lo, hi, t_label(n)


def _rng(cfg):
    from ..seeding import numpy_rng

    return numpy_rng(cfg.get("seed", 0), "report", 0, "bootstrap")


def training_curves(data):
    """Long table: one row per run and iteration (the first rollout is iteration 0): training
    reward of dataset-drawn groups (the one the report compares) and of fresh samples, ..."""
    import pandas as pd

    rows = []
    for run, d in data["runs"].items():
        m = d["metrics"]
        for i in range(len(m)):
            r = m.iloc[i]
            rows.append({"run": run, "method": method_of(run), "seed": d["cfg"]["seed"], "iteration": int(r["iteration"]),
                         "reward_dataset_drawn": float(r["reward_dataset_drawn"]),
                         "reward_fresh": float(r["reward_fresh"]),
                         "strict_accuracy": float(r.get("train_geneval_strict", math.nan)),
                         "degenerate_share": float(r["degenerate_share"]),
                         "degenerate_share_fresh": float(r["degenerate_share_fresh"]),
                         "n_replay": int(r["n_replay"]), "clipfrac_fresh": float(r["clipfrac_fresh"]),
                         "clipfrac_replay": float(r["clipfrac_replay"])})
    return pd.DataFrame(rows)


def _steps_stat(cr, cm, xr, xm, n_ref):
    """Statistic of seed-pair indices (..., k) for ``stats.bca``: the fraction of the reference's
    iterations the run's seed-mean curve needs to reach the reference's seed-mean final value
    (``stats.steps_to_target`` on the mean curves; never reached = 1.0, undefined = nan)."""
    def one(i):
        ref = cr[i].mean(axis=0)
        x, status = steps_to_target(xm, list(cm[i].mean(axis=0)), float(ref[-1]), float(ref[0]))
        return censored_fraction(x, status, n_ref)

    return lambda idx: np.apply_along_axis(one, -1, np.asarray(idx))


def headline_rows(data, rng):
    """The paper's claims per method with replay: steps-to-target on Flow-GRPO's final held-out
    reward (measured points, base at 0) and final training reward of dataset-drawn groups
    (``TRAIN_WINDOW``-iteration average, the first rollout at 0), on seed-mean curves with a BCa
    interval over seed pairs, the status and each seed alone; then the clipped share of replayed
    steps of OP-GRPO and of its per-step-correction variant (t-interval over seeds)."""
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
                xr = xm = list(range(cr.shape[1]))
            stat = _steps_stat(cr, cm, xr, xm, n_ref)
            n = len(mine)
            ref_mean = cr.mean(axis=0)
            _, status = steps_to_target(xm, list(cm.mean(axis=0)), float(ref_mean[-1]), float(ref_mean[0]))
            if n > 1:
                point, lo, hi, undefined = bca(stat, n, rng)
            else:
                point, lo, hi, undefined = float(stat(np.arange(n))), math.nan, math.nan, 0
            per_seed = [steps_to_target(xm, list(cm[i]), float(cr[i][-1]), float(cr[i][0])) for i in range(n)]
            target = "final held-out reward" if kind == "heldout" else \
                f"final training reward of dataset-drawn groups ({TRAIN_WINDOW}-iteration average)"
            rows.append({"claim": f"iterations to Flow-GRPO's {target} (fraction of Flow-GRPO's)",
                         "method": g, "value": float(point), "ci_low": float(lo), "ci_high": float(hi),
                         "interval": (f"95% BCa bootstrap over {n} seed pairs" + (f", {undefined} undefined resamples left out"
                                                                                   if undefined else "")) if n > 1 else "none (1 seed)",
                         "status": status, "seeds": n, "seeds_reaching": int(sum(s == REACHED for _, s in per_seed)),
                         "per_seed": ", ".join(f"{x / n_ref:.2f}" if s == REACHED else s for x, s in per_seed),
                         "paper": PAPER[kind] if g == op else paper_note})
    for g, runs in groups.items():  # OP-GRPO and the variant that differs from it in the correction only
        c = data["runs"][runs[0]]["cfg"]["replay"]
        if op is None or not (g == op or (differs_only_in(data, groups, op, g, ("correction",))
                                          and c["correction"] == "per_step")):
            continue
        per = np.array([float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_replay"])) for r in runs])
        point, lo, hi, label = t_mean(per)
        rows.append({"claim": f"clipped share of replayed samples' trained steps ({c['correction']} correction)",
                     "method": g, "value": float(point), "ci_low": float(lo), "ci_high": float(hi), "interval": label,
                     "status": "", "seeds": len(runs), "seeds_reaching": math.nan,
                     "per_seed": ", ".join(f"{x:.3f}" for x in per),
                     "paper": PAPER["clip_per_step" if c["correction"] == "per_step" else "clip_sequence"]})
    return pd.DataFrame(rows, columns=["claim", "method", "value", "ci_low", "ci_high", "interval", "status", "seeds",
                                       "seeds_reaching", "per_seed", "paper"])


def _final_values(data, runs) -> dict:
    """Per-seed final values of ``runs``: held-out reward and GenEval at the last evaluation, the
    training reward of dataset-drawn groups (trailing average at the last iteration)."""
    last = lambda r: data["runs"][r]["evals"][max(data["runs"][r]["evals"])]  # noqa: E731
    return {"final_heldout_reward": [last(r)["heldout_reward"] for r in runs],
            "final_heldout_geneval": [last(r)["overall"] for r in runs],
            "final_train_reward": [float(train_curve(data, r)[-1]) for r in runs]}


def ablation_rows(data):
    """Per method: final held-out reward and GenEval, final training reward of dataset-drawn groups
    (``TRAIN_WINDOW``-iteration average), clipped share of replayed steps, degenerate-group share;
    mean [95% t-interval over seeds]."""
    import pandas as pd

    rows = []
    for g, runs in methods(data).items():
        d0 = data["runs"][runs[0]]["cfg"]
        row = {"method": g, "seeds": len(runs), "interval": t_label(len(runs)),
               "replay_fraction": d0["replay"]["fraction"], "correction": d0["replay"]["correction"],
               "truncation": d0["replay"]["truncation"], "regenerate": d0["replay"]["regenerate"]}
        vals = {**_final_values(data, runs),
                "degenerate_share": [float(np.mean(data["runs"][r]["metrics"]["degenerate_share"])) for r in runs]}
        if d0["replay"]["fraction"] > 0:
            vals["clipfrac_replay"] = [float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_replay"])) for r in runs]
        for k, v in vals.items():
            p, lo, hi, _ = t_mean(v)
            row[k], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = float(p), float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_differences(data, which=None):
    """Fig. 6's numbers: for each method in ``which`` (default all) other than OP-GRPO, its final
    values minus OP-GRPO's, paired by seed (the seeds both ran), mean [95% paired t-interval]."""
    import pandas as pd

    groups = methods(data)
    op = reference_method(data, groups)
    rows = []
    for g in which or list(groups):
        if op is None or g == op:
            continue
        ops, mine = paired(data, op, g, groups)
        if not mine:
            continue
        a, b = _final_values(data, ops), _final_values(data, mine)
        for metric in a:
            d = np.asarray(b[metric]) - np.asarray(a[metric])
            m, lo, hi, n = t_interval(d)
            rows.append({"method": g, "reference": op, "metric": metric, "difference": m, "ci_low": lo, "ci_high": hi,
                         "interval": t_label(n, paired=True), "seeds": n,
                         "per_seed": ", ".join(f"{x:.4f}" for x in d)})
    return pd.DataFrame(rows, columns=["method", "reference", "metric", "difference", "ci_low", "ci_high", "interval",
                                       "seeds", "per_seed"])


def degenerate_rows(data):
    """Per method: mean degenerate-group share (all groups; fresh samples only) over all iterations
    and over the last 10; mean [95% t-interval over seeds]."""
    import pandas as pd

    rows = []
    for g, runs in methods(data).items():
        row = {"method": g, "seeds": len(runs), "interval": t_label(len(runs))}
        for col in ("degenerate_share", "degenerate_share_fresh"):
            for label, sl in (("", slice(None)), ("_last10", slice(-10, None))):
                v = [float(np.mean(np.asarray(data["runs"][r]["metrics"][col])[sl])) for r in runs]
                p, lo, hi, _ = t_mean(v)
                row[col + label], row[f"{col}{label}_ci_low"], row[f"{col}{label}_ci_high"] = float(p), float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def logp_cliff(data):
    """Per denoising step, mean over iterations with replayed samples, of the run without
    truncation (every stored step kept and rescored): log-prob under the current policy of fresh
    and of replayed trajectories, of replayed ones under their behaviour policy, and the log ratio
    of replayed samples ``log_ratio`` = current minus behaviour (what the sequence correction
    weighs; Fig. 2); mean [95% t-interval over seeds]."""
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
    per = {k: np.asarray(v) for k, v in per.items()}
    per["gap"] = per["replay"] - per["fresh"]
    per["log_ratio"] = per["replay"] - per["replay_behavior"]
    rows = []
    for j in range(s):
        row = {"method": g, "step": j, "seeds": len(runs), "interval": t_label(len(runs))}
        for k, v in per.items():
            p, lo, hi, _ = t_mean(v[:, j])
            row[k], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = float(p), float(lo), float(hi)
        rows.append(row)
    return g, pd.DataFrame(rows)


def write(cfg: dict, data, out: dict) -> dict:
    """Every seed-aggregated table and figure (module doc)."""
    import pandas as pd

    rng = _rng(cfg)
    curves = training_curves(data)
    head = headline_rows(data, rng)
    abl = ablation_rows(data)
    deg = degenerate_rows(data)
    cliff_g, cliff = logp_cliff(data)
    fig3, fig6a, fig6b = figure_groups(data)
    diffs = ablation_differences(data, list(dict.fromkeys(fig6a + fig6b)))
    for df, key in ((curves, "training_curves"), (head, "headline_csv"), (abl, "ablations_csv"),
                    (deg, "degenerate"), (cliff, "logp_cliff"), (diffs, "ablation_differences")):
        T.write_csv(df, out[key], float_format="%.4f")

    def steps_cell(r):
        if str(r["status"]).startswith("undefined"):
            return r["status"]
        cell = T.fmt_interval(r["value"], r["ci_low"], r["ci_high"], pct=True)
        return f"not reached (counted 100%): {cell}" if r["status"] == NOT_REACHED else cell

    pretty = [{"claim": r["claim"], "method": r["method"], "measured [95% interval]": steps_cell(r),
               "interval": r["interval"],
               "seeds": (str(int(r["seeds"])) if r["seeds_reaching"] != r["seeds_reaching"]
                         else f"{int(r['seeds_reaching'])}/{int(r['seeds'])} reach"),
               "per seed": r["per_seed"], "paper": r["paper"]} for _, r in head.iterrows()]
    abl_pretty = pd.DataFrame([{"method": r["method"], "seeds": r["seeds"], "interval": r["interval"],
                                **{k: T.fmt_interval(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"])
                                   for k in ("final_heldout_reward", "final_heldout_geneval", "final_train_reward",
                                             "degenerate_share", "clipfrac_replay") if k in r and r[k] == r[k]}}
                               for _, r in abl.iterrows()]).fillna("")
    deg_pretty = pd.DataFrame([{"method": r["method"], "seeds": r["seeds"], "interval": r["interval"],
                                **{k: T.fmt_interval(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"])
                                   for k in ("degenerate_share", "degenerate_share_last10", "degenerate_share_fresh",
                                             "degenerate_share_fresh_last10")}} for _, r in deg.iterrows()])
    note = ("Steps to target: on the seed-mean curves, the fraction of Flow-GRPO's iterations at which the curve "
            "first reaches Flow-GRPO's final value (held-out: measured points, the base model at 0; training: "
            f"dataset-drawn groups, {TRAIN_WINDOW}-iteration average, the first rollout at 0); a curve that never reaches "
            "it counts 100% (censored: a lower bound); 'undefined (the reference did not improve)' when that value is "
            "not above Flow-GRPO's own start, 'undefined (reached at the first point, before any update)' when the "
            "curve starts at or above it; BCa resamples that are undefined are left out and counted. "
            "Degenerate group: every reward in the group equal (no advantage); `_fresh`: over the group's fresh "
            "samples only (what on-policy sampling alone gives).\n")
    T.write_md(out["headline_md"], "# Headline: the paper's claims at this scale\n\n" + T.markdown(pd.DataFrame(pretty))
               + "\n" + note + "\n## Degenerate groups\n\n" + T.markdown(deg_pretty))
    T.write_md(out["ablations_md"], "# Ablations: final values, mean [95% t-interval over seeds]\n\n"
               + T.markdown(abl_pretty)
               + f"\nheld-out: last evaluation; training reward: dataset-drawn groups, {TRAIN_WINDOW}-iteration average "
                 "at the last iteration; clipfrac_replay: mean over iterations of the clipped share of replayed "
                 "samples' trained steps. Differences from OP-GRPO (paired by seed): ablation_differences.csv, Fig. 6.\n")

    figures.curve_panels(data, fig3, "Fig. 3: Flow-GRPO vs OP-GRPO", out["fig3"])
    figures.forest(diffs[diffs["method"].isin(fig6a)], "Fig. 6a: ablations, each minus OP-GRPO", out["fig6a"])
    figures.forest(diffs[diffs["method"].isin(fig6b)], "Fig. 6b: replay fraction, each minus OP-GRPO", out["fig6b"])
    figures.logp_cliff(data, cliff_g, cliff, out["fig2"])
    return {"headline": head, "ablations": abl, "degenerate": deg, "logp_cliff": cliff, "curves": curves,
            "ablation_differences": diffs}
