"""The report's figures (matplotlib, PNG at 110 dpi, written atomically).

Per experiment: training curves, held-out GenEval, the base-vs-trained sample grid, per-step
log-probs, clipped fractions. Seed-aggregated: Figs. 3, 6a, 6b (curve panels with bootstrap bands)
and Fig. 2 (the log-prob cliff). Each function draws from numbers it is given or from the loaded
``data``; the bands' intervals come from ``stats.bootstrap`` with the caller's ``rng``."""

from __future__ import annotations

import numpy as np

from .methods import heldout_array, methods, reference_method, train_curve
from .stats import bootstrap, smooth


def use_agg():
    """Draw without a display (call before pyplot is first imported)."""
    import matplotlib

    matplotlib.use("Agg")


def save(fig, path):
    from ..formats.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def training_curves(data, path):
    """Training reward of fresh samples and strict accuracy (5-iteration averages), replay buffer."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for run, d in data["runs"].items():
        m = d["metrics"]
        x = m["iteration"].to_numpy() + 1
        line = axes[0].plot(x, smooth(m["reward_fresh"]), label=run)[0]
        axes[0].plot(x, m["reward_fresh"], alpha=0.2, color=line.get_color())
        if "train_geneval_strict" in m:
            axes[1].plot(x, smooth(m["train_geneval_strict"]), label=run, color=line.get_color())
        if "buffer_reward" in m:
            axes[2].plot(x, m["buffer_reward"], label=f"{run}: mean stored reward", color=line.get_color())
            axes[2].plot(x, np.asarray(m["buffer_size"]) / d["cfg"]["replay"]["capacity"], ls="--",
                         color=line.get_color(), label=f"{run}: size / capacity")
    axes[0].set(title="training reward of fresh samples (5-iteration average)", xlabel="iteration", ylabel="mean reward")
    axes[1].set(title="training strict GenEval accuracy (5-iteration average)", xlabel="iteration", ylabel="accuracy")
    axes[2].set(title="replay buffer", xlabel="iteration")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


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
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


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
    fig.tight_layout(rect=(0, 0.02 + 0.012 * len(shown) / 2, 1, 1))
    save(fig, path)
    plt.close(fig)


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
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


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
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def _band(ax, xs, curves, rng, label, color=None):
    p, lo, hi = bootstrap(np.asarray(curves), rng)
    line = ax.plot(xs, p, label=f"{label} (n={len(curves)})", color=color)[0]
    if len(curves) > 1:
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    return line


def curve_panels(data, which, rng, title, path):
    """Figs. 3/6: per method in ``which``, seed-mean training reward, held-out reward and degenerate
    share with bootstrap bands (draws from ``rng`` in panel order)."""
    import matplotlib.pyplot as plt

    groups = methods(data)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for g in which:
        runs = groups[g]
        n = min(len(data["runs"][r]["metrics"]) for r in runs)
        line = _band(axes[0], np.arange(1, n + 1), [train_curve(data, r)[:n] for r in runs], rng, g)
        xs, _ = heldout_array(data, runs[0])
        _band(axes[1], xs, [heldout_array(data, r)[1] for r in runs], rng, g, line.get_color())
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


def logp_cliff(data, cliff_g, cliff, path):
    """Fig. 2 from ``seeds.logp_cliff``'s table: per-step log-probs with intervals, OP-GRPO's t_off."""
    import matplotlib.pyplot as plt

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
    save(fig, path)
    plt.close(fig)


def reward_label(rc: dict) -> str:
    """The held-out reward's name for an axis: GenEval's partial credit or strict 0/1 verdict (the
    evaluation records the run's training reward on the held-out images)."""
    terms = rc["reward"]["terms"]
    if list(terms) == ["geneval"]:
        value = rc["reward"].get("options", {}).get("geneval", {}).get("value", "partial")
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
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
