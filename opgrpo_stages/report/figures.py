"""The report's figures (matplotlib, PNG at 110 dpi, written atomically).

Per experiment: training curves, held-out GenEval, the base-vs-trained sample grid, per-step
log-probs, clipped fractions. Seed-aggregated: Fig. 3 (curve panels, 95% t-intervals over seeds),
Figs. 6a, 6b (forest plots: each variant minus OP-GRPO) and Fig. 2 (the log ratio of replayed
samples per step). Each function draws from numbers it is given or from the loaded ``data``.
Training curves start at iteration 0 (the first rollout, before any update); held-out curves at 0
(the base model), measured points only."""

from __future__ import annotations

import numpy as np

from .methods import TRAIN_WINDOW, heldout_array, methods, reference_method, train_curve
from .stats import smooth, t_interval


def use_agg():
    """Draw without a display (call before pyplot is first imported)."""
    import matplotlib

    matplotlib.use("Agg")


def save(fig, path, axes=(), rect=None):
    """Lay out, write atomically and close a figure; each of ``axes`` gets the house grid and legend."""
    import matplotlib.pyplot as plt

    from ..formats.atomic import atomic_path

    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout(**({"rect": rect} if rect is not None else {}))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def training_curves(data, path):
    """Training reward of fresh samples and strict accuracy (5-iteration averages), replay buffer."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for run, d in data["runs"].items():
        m = d["metrics"]
        x = m["iteration"].to_numpy()  # the first rollout is iteration 0
        line = axes[0].plot(x, smooth(m["reward_dataset_drawn"], TRAIN_WINDOW), label=run)[0]
        axes[0].plot(x, m["reward_dataset_drawn"], alpha=0.2, color=line.get_color())
        if "train_geneval_strict" in m:
            axes[1].plot(x, smooth(m["train_geneval_strict"]), label=run, color=line.get_color())
        if "buffer_reward" in m:
            axes[2].plot(x, m["buffer_reward"], label=f"{run}: mean stored reward", color=line.get_color())
            axes[2].plot(x, np.asarray(m["buffer_size"]) / d["cfg"]["replay"]["capacity"], ls="--",
                         color=line.get_color(), label=f"{run}: size / capacity")
    axes[0].set(title=f"training reward, dataset-drawn groups ({TRAIN_WINDOW}-iteration average)", xlabel="iteration",
                ylabel="mean reward")
    axes[1].set(title="training strict GenEval accuracy (5-iteration average)", xlabel="iteration", ylabel="accuracy")
    axes[2].set(title="replay buffer", xlabel="iteration")
    save(fig, path, axes)


def heldout(data, path):
    """Held-out GenEval overall and reward per evaluated iteration, the base model at 0."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run, d in data["runs"].items():
        ks = sorted(d["evals"])
        xs = [0] + [k + 1 for k in ks]
        axes[0].plot(xs, [data["base"]["overall"]] + [d["evals"][k]["overall"] for k in ks], marker="o", label=run)
        axes[1].plot(xs, [data["base"]["heldout_reward"]] + [d["evals"][k]["heldout_reward"] for k in ks],
                     marker="o", label=run)
    axes[0].set(title="held-out GenEval overall (ODE, fixed noise)", xlabel="iteration", ylabel="GenEval overall")
    axes[1].set(title="held-out partial-credit reward", xlabel="iteration", ylabel="mean reward")
    save(fig, path, axes)


def samples_grid(panels, shown, path):
    """One row per (title, image grid file); ``shown``: the prompts, captioned in reading order."""
    import textwrap

    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels) + 0.25 * len(shown) / 2))
    for ax, (title, grid) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.asarray(Image.open(grid)))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    caption = "images in reading order: " + "; ".join(f"{i + 1}. {p}" for i, p in enumerate(shown))
    fig.text(0.02, 0.005, "\n".join(textwrap.wrap(caption, 120)), fontsize=7, va="bottom")
    save(fig, path, rect=(0, 0.02 + 0.012 * len(shown) / 2, 1, 1))


def logp_per_step(data, path):
    """Per-step log-probs of fresh vs replayed samples per run, averaged over iterations; truncation dotted."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, d in data["runs"].items():
        m = d["metrics"]
        s = d["cfg"]["sampling"]["num_steps"]
        fresh = [m[f"logp_fresh_s{j}"].mean() for j in range(s)]
        line = ax.plot(range(s), fresh, marker="o", label=f"{run}: fresh")[0]
        if m["n_replay"].sum() > 0:
            rep = [m[f"logp_replay_s{j}"].mean() for j in range(s)]
            ax.plot(range(s), rep, marker="x", ls="--", color=line.get_color(), label=f"{run}: replayed")
            t_off = d["cfg"]["replay"]["truncation"]
            if t_off is not None:
                ax.axvline(t_off - 0.5, color=line.get_color(), ls=":", lw=1)
    ax.set(title="per-step log-prob under the rollout policy; dotted: truncation", xlabel="denoising step",
           ylabel="mean log-prob")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)


def clipped_fraction(data, names, fresh, replayed, path, n_runs):
    """Bars of the clipped fraction of fresh and replayed samples per run (``n_runs`` sets the width)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.4 * n_runs), 4))
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, fresh, 0.4, label="fresh")
    ax.bar(xs + 0.2, replayed, 0.4, label="replayed")
    ax.set_xticks(xs, [f"{r}\n({data['runs'][r]['cfg']['replay']['correction']})" for r in names], fontsize=7)
    ax.set(title="clipped fraction of trained steps", ylabel="fraction clipped")
    ax.legend()
    save(fig, path)


def _t_points(ax, xs, curves, label, color=None, band=False):
    """Mean over seeds (rows of ``curves``) at each x with its 95% t-interval: error bars at
    measured points (``band``: a shaded band, for dense per-iteration curves)."""
    curves = np.asarray(curves, dtype=float)
    iv = np.array([t_interval(curves[:, j])[:3] for j in range(curves.shape[1])])
    lab = f"{label} (mean of {len(curves)} seeds" + (", 95% t-interval)" if len(curves) > 1 else ")")
    if band:
        line = ax.plot(xs, iv[:, 0], label=lab, color=color)[0]
        if len(curves) > 1:
            ax.fill_between(xs, iv[:, 1], iv[:, 2], alpha=0.2, color=line.get_color())
        return line
    err = np.vstack([iv[:, 0] - iv[:, 1], iv[:, 2] - iv[:, 0]])
    return ax.errorbar(xs, iv[:, 0], yerr=np.where(np.isfinite(err), err, 0), marker="o", capsize=3, label=lab,
                       color=color).lines[0]


def curve_panels(data, which, title, path):
    """Fig. 3: per method in ``which``, the training reward of dataset-drawn groups per iteration
    (the first rollout at 0), the held-out reward at each evaluation (measured points, the base
    model at 0 and as a line) and the degenerate-group share; means over seeds with 95% t-intervals."""
    import matplotlib.pyplot as plt

    groups = methods(data)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for g in which:
        runs = groups[g]
        n = min(len(data["runs"][r]["metrics"]) for r in runs)
        line = _t_points(axes[0], np.arange(n), [train_curve(data, r)[:n] for r in runs], g, band=True)
        xs, _ = heldout_array(data, runs[0])
        _t_points(axes[1], xs, [heldout_array(data, r)[1] for r in runs], g, line.get_color())
        _t_points(axes[2], np.arange(n), [np.asarray(data["runs"][r]["metrics"]["degenerate_share"])[:n] for r in runs],
                  g, line.get_color(), band=True)
        axes[1].set_xticks([int(x) for x in xs])
    axes[1].axhline(data["base"]["heldout_reward"], color="k", ls="--", lw=1, label="base model")
    rc = data["runs"][groups[which[0]][0]]["cfg"] if which else None
    axes[0].set(title=f"training reward, dataset-drawn groups ({TRAIN_WINDOW}-iteration average)",
                xlabel="iteration (0 = first rollout)", ylabel=f"training {reward_label(rc, heldout=False) if rc else 'reward'}")
    axes[1].set(title="held-out reward at each evaluation (measured points)", xlabel="iterations trained (0 = base)",
                ylabel=f"held-out {reward_label(rc) if rc else 'reward'}")
    axes[2].set(title="share of degenerate groups (all rewards tie)", xlabel="iteration (0 = first rollout)",
                ylabel="share")
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    for a in (axes[0], axes[2]):  # the held-out panel's ticks are its evaluations
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def forest(diffs, title, path):
    """Figs. 6a/6b: one panel per metric, one row per variant: its difference from OP-GRPO (paired
    by seed) with its 95% interval (``seeds.ablation_differences``), 0 marked."""
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(diffs["metric"])) if len(diffs) else ["final_heldout_reward"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.5 * max(2, diffs["method"].nunique()) + 1.5),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        d = diffs[diffs["metric"] == metric].reset_index(drop=True)
        ys = np.arange(len(d))[::-1]
        lo = (d["difference"] - d["ci_low"]).to_numpy(dtype=float)
        hi = (d["ci_high"] - d["difference"]).to_numpy(dtype=float)
        ax.errorbar(d["difference"], ys, xerr=np.where(np.isfinite([lo, hi]), [lo, hi], 0), fmt="o", capsize=3)
        ax.set_yticks(ys, [f"{m} (n={s})" for m, s in zip(d["method"], d["seeds"])], fontsize=7)
        ax.axvline(0, color="k", lw=1)
        ax.set(title=metric.replace("_", " "), xlabel="minus OP-GRPO (paired by seed)")
        ax.grid(alpha=0.3, axis="x")
    ref = diffs["reference"].iloc[0] if len(diffs) else "OP-GRPO"
    fig.suptitle(f"{title} ({ref}); bars: 95% paired t-interval over seeds", fontsize=9)
    save(fig, path)


def logp_cliff(data, cliff_g, cliff, path):
    """Fig. 2 from ``seeds.logp_cliff``'s table: per denoising step, the log ratio of replayed
    samples (log-prob under the current minus under the behaviour policy) in the run that keeps
    every stored step, mean over seeds with its 95% t-interval; OP-GRPO's t_off marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    if cliff_g is not None and not cliff.empty:
        steps = cliff["step"].to_numpy()
        lo = (cliff["log_ratio"] - cliff["log_ratio_ci_low"]).to_numpy(dtype=float)
        hi = (cliff["log_ratio_ci_high"] - cliff["log_ratio"]).to_numpy(dtype=float)
        ax.errorbar(steps, cliff["log_ratio"], yerr=np.where(np.isfinite([lo, hi]), [lo, hi], 0), marker="o", capsize=3,
                    label=f"replayed samples, mean of {int(cliff['seeds'].iloc[0])} seeds ({cliff['interval'].iloc[0]})")
        ax.axhline(0, color="gray", lw=1)
        groups = methods(data)
        ref = reference_method(data, groups)
        t_off = data["runs"][groups[ref][0]]["cfg"]["replay"]["truncation"] if ref else None
        if t_off is not None:
            ax.axvline(t_off - 0.5, color="k", ls="--", lw=1, label=f"OP-GRPO's truncation (t_off = {t_off})")
        ax.set_xticks([int(s) for s in steps])
        ax.set_title(f"Fig. 2: per-step log ratio of replayed samples, run {cliff_g} (all stored steps kept)",
                     fontsize=9)
    ax.set(xlabel="denoising step", ylabel="log p_current - log p_behaviour")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)


def reward_label(rc: dict, heldout: bool = True) -> str:
    """The reward's name for an axis. The held-out evaluation scores GenEval's partial credit even
    when the run trains on the strict 0/1 verdict (``reward.options.geneval.value``: training only)."""
    terms = rc["reward"]["terms"]
    if list(terms) == ["geneval"]:
        value = "partial" if heldout else rc["reward"].get("options", {}).get("geneval", {}).get("value", "partial")
        return "GenEval partial-credit reward" if value == "partial" else "GenEval strict accuracy (0/1)"
    return "reward (" + " + ".join(f"{w:g} {t}" for t, w in terms.items()) + ")"


def speedup_heldout(xs, arms: dict, base: float, target: float, reward: str, path):
    """The `speedup` experiment's held-out curves: per arm (name -> array (seeds, points), column 0
    the base) each seed's measured points (thin) and the mean over seeds with its 95% t-interval at
    every evaluation (no smoothing; straight segments only join measured points); the base model and
    L (Flow-GRPO's mean at T) as horizontal lines; integer x axis in iterations trained."""
    import matplotlib.pyplot as plt

    from .stats import t_interval

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, ys), color in zip(arms.items(), ("tab:blue", "tab:orange")):
        ys = np.asarray(ys, dtype=float)
        for row in ys:
            ax.plot(xs, row, color=color, alpha=0.15, lw=0.8, marker=".", ms=3)
        iv = np.array([t_interval(ys[:, j]) for j in range(ys.shape[1])])  # mean, low, high, n
        err = np.vstack([iv[:, 0] - iv[:, 1], iv[:, 2] - iv[:, 0]])
        ax.errorbar(xs, iv[:, 0], yerr=np.where(np.isfinite(err), err, 0), color=color, marker="o", capsize=3,
                    label=f"{name}: mean of {len(ys)} seeds, 95% t-interval")
    ax.axhline(base, color="k", ls="--", lw=1, label=f"base model ({base:.3f})")
    ax.axhline(target, color="gray", ls=":", lw=1, label=f"L = Flow-GRPO's mean at T ({target:.3f})")
    ax.set_xticks([int(x) for x in xs])
    ax.set(xlabel="iterations trained (0 = base model)", ylabel=f"held-out {reward}",
           title="speedup: held-out reward of the raw policy (measured points; thin: each seed)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)
