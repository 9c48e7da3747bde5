"""Rule ``report``: figures and the results table from every run's metrics and evaluations.

- ``training_curves.png``: per-iteration training reward (and strict accuracy) of each run.
- ``heldout_geneval.png``: held-out GenEval overall score (fixed noise, ODE) vs iteration,
  the base model as iteration 0.
- ``samples_base_vs_trained.png``: the same held-out prompts and noise, base vs final policies.
- ``results.csv`` / ``results.md``: GenEval overall and per tag for the base and each run's
  last checkpoint, with the gain over the base.
"""

from __future__ import annotations

from pathlib import Path

from .. import layout as L

DEFAULT_OUTPUTS = {
    "curves": "results/figures/training_curves.png",
    "heldout": "results/figures/heldout_geneval.png",
    "grid": "results/figures/samples_base_vs_trained.png",
    "csv": "results/tables/results.csv",
    "md": "results/tables/results.md",
}


def _metrics(cfg_run) -> "object":
    import pandas as pd

    from ..formats import tables

    run = cfg_run["run"]
    frames = [tables.read(L.metrics(run, k), "update_metrics") for k in range(cfg_run["train"]["iterations"])]
    return pd.concat(frames, ignore_index=True)


def _eval_summary(path) -> dict:
    from ..formats import tables
    from ..geneval import summarize

    df = tables.read(path, "eval")
    out = summarize(list(df["tag"]), list(df["correct"]))
    out["heldout_reward"] = float(df["reward"].mean())
    out["n_images"] = len(df)
    return out


def smooth(values, window: int = 5):
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return v
    w = min(window, len(v))
    c = np.convolve(v, np.ones(w) / w, mode="valid")
    return np.concatenate([np.cumsum(v[: w - 1]) / np.arange(1, w), c])


def collect(cfg: dict) -> dict:
    from .. import config as C

    data = {"base": _eval_summary(L.eval_table("base", 0)), "runs": {}}
    for run in cfg["runs"]:
        rc = C.resolve_run(cfg, run)
        evals = {k: _eval_summary(L.eval_table(run, k)) for k in L.eval_iterations(rc)}
        data["runs"][run] = {"cfg": rc, "metrics": _metrics(rc), "evals": evals}
    return data


def results_table(data) -> "object":
    import pandas as pd

    tags = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    base = data["base"]
    rows = [{"model": "base", "iteration": 0, "geneval_overall": base["overall"], "gain_vs_base": 0.0,
             "heldout_reward": base["heldout_reward"], **{t: base.get(t, float("nan")) for t in tags}}]
    for run, d in data["runs"].items():
        k = max(d["evals"])
        e = d["evals"][k]
        rows.append({"model": run, "iteration": k + 1, "geneval_overall": e["overall"],
                     "gain_vs_base": e["overall"] - base["overall"], "heldout_reward": e["heldout_reward"],
                     **{t: e.get(t, float("nan")) for t in tags}})
    return pd.DataFrame(rows)


def _markdown(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def report(cfg: dict, outputs: dict | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from ..formats.atomic import atomic_path, write_text

    out = {**DEFAULT_OUTPUTS, **(outputs or {})}
    for p in out.values():
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    data = collect(cfg)

    # training curves
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run, d in data["runs"].items():
        m = d["metrics"]
        x = m["iteration"].to_numpy() + 1
        line = axes[0].plot(x, smooth(m["reward_mean"]), label=f"{run}")[0]
        axes[0].plot(x, m["reward_mean"], alpha=0.25, color=line.get_color())
        if "train_geneval_strict" in m:
            axes[1].plot(x, smooth(m["train_geneval_strict"]), label=run, color=line.get_color())
    axes[0].set(title="training reward (partial credit), smoothed", xlabel="iteration", ylabel="mean reward")
    axes[1].set(title="training strict GenEval accuracy, smoothed", xlabel="iteration", ylabel="accuracy")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    with atomic_path(out["curves"]) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    # held-out curve
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, d in data["runs"].items():
        ks = sorted(d["evals"])
        ax.plot([0] + [k + 1 for k in ks], [data["base"]["overall"]] + [d["evals"][k]["overall"] for k in ks],
                marker="o", label=run)
    ax.axhline(data["base"]["overall"], color="grey", ls="--", lw=1, label="base")
    ax.set(title="held-out GenEval overall (ODE, fixed noise)", xlabel="iteration", ylabel="GenEval overall")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out["heldout"]) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    # base vs trained samples (same prompts, same noise)
    panels = [("base", L.eval_grid("base", 0))] + [
        (f"{run} (iteration {max(d['evals']) + 1})", L.eval_grid(run, max(d["evals"]))) for run, d in data["runs"].items()
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)))
    for ax, (title, path) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.asarray(Image.open(path)))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out["grid"]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

    table = results_table(data)
    with atomic_path(out["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    write_text(out["md"], _markdown(table))
    return {"table": table, "data": data}
