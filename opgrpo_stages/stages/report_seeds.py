"""The report's seed-aggregated part (issue 14): the paper's claims with 95% intervals over seeds.

Runs named ``<name>-seed<k>`` (``seeds``, ``experiment_seeds``) are repeats of ``<name>``; a
"method" is the set of repeats of one name. Every interval is a percentile bootstrap over seeds
(``B`` resamples of the seeds with replacement, fixed RNG), paired by seed where two methods are
compared (OP-GRPO and Flow-GRPO of the same seed share the base, the prompts and the noise roots).
With one seed the interval is absent (NaN).

Outputs (``outputs_for`` of report.py):
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
"""

from __future__ import annotations

import math
import re

import numpy as np

B = 10000  # bootstrap resamples
PAPER = {"heldout": "34.2% image / 30.1% video (steps to Flow-GRPO's final performance)",
         "train": "34.2% image / 30.1% video (steps to Flow-GRPO's final performance)",
         "clip_per_step": "over 40%", "clip_sequence": "11.8%"}


def method_of(run: str) -> str:
    return re.sub(r"-seed\d+$", "", run)


def methods(data) -> dict[str, list[str]]:
    """method -> its runs, in the experiment's order."""
    out: dict[str, list[str]] = {}
    for run in data["runs"]:
        out.setdefault(method_of(run), []).append(run)
    return out


def seed_of(data, run) -> int:
    return int(data["runs"][run]["cfg"]["seed"])


def bootstrap(values, rng, stat=None):
    """(statistic, 2.5th, 97.5th percentile) of ``stat`` (default mean over seeds, axis 0) under
    resampling the seeds (rows) with replacement. ``values``: array (seeds, ...). Non-finite
    statistics (e.g. a target never reached: +inf) stay in the ranking; the 'inverted_cdf'
    percentile returns an attained value, so an interval may end at inf (= not reached)."""
    v = np.asarray(values, dtype=float)
    point = stat(v) if stat else v.mean(axis=0)
    if len(v) < 2:
        nan = np.full(np.shape(point), np.nan)
        return point, nan, nan
    idx = rng.integers(0, len(v), size=(B, len(v)))
    if stat:  # a resample's statistic depends on which seeds it drew, not their order: evaluate each set once
        memo: dict = {}
        boot = np.array([memo[k] if k in memo else memo.setdefault(k, stat(v[list(k)]))
                         for k in map(tuple, np.sort(idx, axis=1))])
    else:
        boot = v[idx].mean(axis=1)  # (B, ...)
    lo = np.quantile(boot, 0.025, axis=0, method="inverted_cdf")
    hi = np.quantile(boot, 0.975, axis=0, method="inverted_cdf")
    return point, lo, hi


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


def _fmt(point, lo, hi, pct=False) -> str:
    f = (lambda x: "not reached" if x == math.inf else f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    if lo != lo:
        return f(point)
    return f"{f(point)} [{f(lo)}, {f(hi)}]"


def _crossing_fraction(ref_curves, run_curves, xs_ref, xs_run, n_ref):
    """Fraction of the reference's iterations at which the seed-mean run curve first reaches the
    seed-mean reference curve's final value (+inf when it never does)."""
    from .report import _crossing

    ref = ref_curves.mean(axis=0)
    c = _crossing(xs_run, list(run_curves.mean(axis=0)), float(ref[-1]))
    return c / n_ref if c == c else math.inf


def _paired(data, ref_method, method, groups):
    """Runs of ``method`` and of ``ref_method`` with the same seed, as two aligned lists."""
    ref_by_seed = {seed_of(data, r): r for r in groups[ref_method]}
    pairs = [(ref_by_seed[seed_of(data, r)], r) for r in groups[method] if seed_of(data, r) in ref_by_seed]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _train_curve(data, run):
    from .report import smooth

    return np.asarray(smooth(data["runs"][run]["metrics"]["reward_fresh"], 5))


def _heldout(data, run):
    from .report import heldout_curve

    xs, ys = heldout_curve(data, run)
    return xs, np.asarray(ys)


def flowgrpo_method(data, groups):
    return next((g for g, rs in groups.items() if data["runs"][rs[0]]["cfg"]["replay"]["fraction"] == 0), None)


def reference_method(data, groups):
    """OP-GRPO as configured: the first method with replay (the experiment lists it first)."""
    return next((g for g, rs in groups.items() if data["runs"][rs[0]]["cfg"]["replay"]["fraction"] > 0), None)


def _differs_only_in(data, groups, a, b, keys) -> bool:
    """Methods a and b have the same replay settings except ``keys``."""
    if a is None:
        return False
    ca, cb = (data["runs"][groups[m][0]]["cfg"]["replay"] for m in (a, b))
    return all(ca[k] == cb[k] for k in ca if k not in keys)


def headline_rows(data, rng):
    import pandas as pd

    groups = methods(data)
    ref = flowgrpo_method(data, groups)
    op = reference_method(data, groups)
    rows = []
    for g, runs in groups.items():
        if ref is None or g == ref or data["runs"][runs[0]]["cfg"]["replay"]["fraction"] == 0:
            continue
        paper_note = "n/a (ablation)"
        if _differs_only_in(data, groups, op, g, ("fraction",)) and data["runs"][runs[0]]["cfg"]["replay"]["fraction"] == 0.05:
            paper_note = "OP-GRPO-5: only 23.1% faster convergence"
        refs, mine = _paired(data, ref, g, groups)
        if not mine:
            continue
        n_ref = data["runs"][refs[0]]["cfg"]["train"]["iterations"]
        for kind in ("heldout", "train"):
            if kind == "heldout":
                xr, _ = _heldout(data, refs[0])
                xm, _ = _heldout(data, mine[0])
                cr = np.array([_heldout(data, r)[1] for r in refs])
                cm = np.array([_heldout(data, r)[1] for r in mine])
            else:
                cr = np.array([_train_curve(data, r) for r in refs])
                cm = np.array([_train_curve(data, r) for r in mine])
                xr = xm = list(range(1, cr.shape[1] + 1))
            both = np.concatenate([cr, cm], axis=1)  # resample seed pairs together
            k = cr.shape[1]
            stat = lambda v, k=k, xr=xr, xm=xm: _crossing_fraction(v[:, :k], v[:, k:], xr, xm, n_ref)  # noqa: E731
            point, lo, hi = bootstrap(both, rng, stat)
            per_seed = [_crossing_fraction(cr[i:i + 1], cm[i:i + 1], xr, xm, n_ref) for i in range(len(mine))]
            rows.append({"claim": f"iterations to Flow-GRPO's final smoothed {kind} reward (fraction of Flow-GRPO's)",
                         "method": g, "value": float(point), "ci_low": float(lo), "ci_high": float(hi),
                         "seeds": len(mine), "seeds_reaching": int(sum(x != math.inf for x in per_seed)),
                         "per_seed": ", ".join("not reached" if x == math.inf else f"{x:.2f}" for x in per_seed),
                         "paper": PAPER[kind] if g == op else paper_note})
    for g, runs in groups.items():  # OP-GRPO and the variant that differs from it in the correction only
        c = data["runs"][runs[0]]["cfg"]["replay"]
        if op is None or not (g == op or (_differs_only_in(data, groups, op, g, ("correction",))
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

    from .report import smooth

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


def cliff_method(data, groups):
    """Fig. 2's run: the method with replay and no truncation (every stored step kept and
    rescored under the current policy), else the OP-GRPO reference."""
    for g, rs in groups.items():
        c = data["runs"][rs[0]]["cfg"]["replay"]
        if c["fraction"] > 0 and c["truncation"] is None:
            return g
    return reference_method(data, groups)


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


def _band(ax, xs, curves, rng, label, color=None):
    p, lo, hi = bootstrap(np.asarray(curves), rng)
    line = ax.plot(xs, p, label=f"{label} (n={len(curves)})", color=color)[0]
    if len(curves) > 1:
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    return line


def _curve_panels(data, which, rng, title, path, save):
    import matplotlib.pyplot as plt

    groups = methods(data)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for g in which:
        runs = groups[g]
        n = min(len(data["runs"][r]["metrics"]) for r in runs)
        line = _band(axes[0], np.arange(1, n + 1), [_train_curve(data, r)[:n] for r in runs], rng, g)
        xs, _ = _heldout(data, runs[0])
        _band(axes[1], xs, [_heldout(data, r)[1] for r in runs], rng, g, line.get_color())
        _band(axes[2], np.arange(1, n + 1), [np.asarray(data["runs"][r]["metrics"]["degenerate_share"])[:n] for r in runs],
              rng, g, line.get_color())
    axes[0].set(title="training reward, fresh samples (5-iteration average)", xlabel="iteration", ylabel="mean reward")
    axes[1].set(title="held-out reward (2-point average; 0 = base)", xlabel="iteration", ylabel="mean reward")
    axes[2].set(title="share of degenerate groups (all rewards tie)", xlabel="iteration", ylabel="share")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title + "; bands: bootstrap 95% interval of the mean over seeds", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def figure_groups(data):
    """(Fig. 3, Fig. 6a, Fig. 6b) method lists: Flow-GRPO and OP-GRPO; with the methods that share
    OP-GRPO's replay fraction (the algorithm ablations); with those that differ from OP-GRPO in
    the replay fraction only."""
    groups = methods(data)
    fg, ref = flowgrpo_method(data, groups), reference_method(data, groups)
    base = [g for g in (fg, ref) if g is not None]
    if ref is None:
        return base, base, base
    rc = data["runs"][groups[ref][0]]["cfg"]["replay"]
    same = lambda c, keys: all(c[k] == rc[k] for k in keys)  # noqa: E731
    algo = [g for g, rs in groups.items() if g not in base and data["runs"][rs[0]]["cfg"]["replay"]["fraction"] == rc["fraction"]]
    others = [k for k in rc if k != "fraction"]
    frac = [g for g, rs in groups.items() if g not in base and data["runs"][rs[0]]["cfg"]["replay"]["fraction"] > 0
            and same(data["runs"][rs[0]]["cfg"]["replay"], others)]
    return base, base + algo, base + sorted(frac, key=lambda g: data["runs"][groups[g][0]]["cfg"]["replay"]["fraction"])


def _md(df, pct_cols=()) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def write(cfg: dict, data, out: dict, save) -> dict:
    """Every seed-aggregated table and figure of issue 14 (module doc)."""
    import matplotlib.pyplot as plt

    from ..formats.atomic import atomic_path, write_text

    rng = _rng(cfg)
    curves = training_curves(data)
    head = headline_rows(data, rng)
    abl = ablation_rows(data, rng)
    deg = degenerate_rows(data, rng)
    cliff_g, cliff = logp_cliff(data, rng)
    for df, key in ((curves, "training_curves"), (head, "headline_csv"), (abl, "ablations_csv"),
                    (deg, "degenerate"), (cliff, "logp_cliff")):
        with atomic_path(out[key]) as tmp:
            df.to_csv(tmp, index=False, float_format="%.4f")

    pretty = [{"claim": r["claim"], "method": r["method"],
               "measured (95% interval over seeds)": _fmt(r["value"], r["ci_low"], r["ci_high"], pct=True),
               "seeds": (str(int(r["seeds"])) if r["seeds_reaching"] != r["seeds_reaching"]
                         else f"{int(r['seeds_reaching'])}/{int(r['seeds'])} reach"),
               "per seed": r["per_seed"], "paper": r["paper"]} for _, r in head.iterrows()]
    import pandas as pd

    abl_pretty = pd.DataFrame([{"method": r["method"], "seeds": r["seeds"],
                                **{k: _fmt(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"])
                                   for k in ("final_heldout_reward", "final_heldout_geneval", "final_train_reward",
                                             "degenerate_share", "clipfrac_replay") if k in r and r[k] == r[k]}}
                               for _, r in abl.iterrows()]).fillna("")
    deg_pretty = pd.DataFrame([{"method": r["method"], "seeds": r["seeds"],
                                **{k: _fmt(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"])
                                   for k in ("degenerate_share", "degenerate_share_last10", "degenerate_share_fresh",
                                             "degenerate_share_fresh_last10")}} for _, r in deg.iterrows()])
    note = ("Intervals: percentile bootstrap over seeds (10,000 resamples; paired by seed for the steps-to-target "
            "rows, computed on the seed-mean curves: 'not reached' = the resampled mean curve never reaches "
            "Flow-GRPO's final smoothed value; 0% = that value is not above the curve's start, e.g. Flow-GRPO "
            "ended below the base model). Degenerate group: every reward in the group equal (no advantage); "
            "`_fresh`: over the group's fresh samples only (what on-policy sampling alone gives).\n")
    write_text(out["headline_md"], "# Headline: the paper's claims at this scale\n\n" + _md(pd.DataFrame(pretty))
               + "\n" + note + "\n## Degenerate groups\n\n" + _md(deg_pretty))
    write_text(out["ablations_md"], "# Ablations: final values, mean [95% interval] over seeds\n\n" + _md(abl_pretty)
               + "\nheld-out: last evaluation; training reward: fresh samples, 5-iteration average at the last "
                 "iteration; clipfrac_replay: mean over iterations of the clipped share of replayed samples' trained steps.\n")

    fig3, fig6a, fig6b = figure_groups(data)
    _curve_panels(data, fig3, rng, "Fig. 3: Flow-GRPO vs OP-GRPO", out["fig3"], save)
    _curve_panels(data, fig6a, rng, "Fig. 6a: ablations", out["fig6a"], save)
    _curve_panels(data, fig6b, rng, "Fig. 6b: replay fraction", out["fig6b"], save)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    if cliff_g is not None and not cliff.empty:
        steps = cliff["step"].to_numpy()
        for k, style in (("fresh", dict(marker="o")), ("replay", dict(marker="x", ls="--")),
                         ("replay_behavior", dict(marker=".", ls=":"))):
            line = ax.plot(steps, cliff[k], label={"fresh": "fresh (on-policy)", "replay": "replayed, under the current policy",
                                                    "replay_behavior": "replayed, under its behaviour policy"}[k], **style)[0]
            if not cliff[f"{k}_ci_low"].isna().all():
                ax.fill_between(steps, cliff[f"{k}_ci_low"], cliff[f"{k}_ci_high"], alpha=0.2, color=line.get_color())
        groups = methods(data)
        ref = reference_method(data, groups)
        t_off = data["runs"][groups[ref][0]]["cfg"]["replay"]["truncation"] if ref else None
        if t_off is not None:
            ax.axvline(t_off - 0.5, color="k", ls="--", lw=1, label=f"OP-GRPO's truncation (t_off = {t_off})")
        ax.set_title(f"Fig. 2: per-step log-prob, run {cliff_g} (all stored steps kept)", fontsize=9)
    ax.set(xlabel="denoising step", ylabel="mean log-prob (mean over latent dims)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, out["fig2"])
    plt.close(fig)
    return {"headline": head, "ablations": abl, "degenerate": deg, "logp_cliff": cliff, "curves": curves}
