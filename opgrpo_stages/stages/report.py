"""Rule ``report``: figures and tables of one experiment (a named group of runs).

Under ``results/<experiment>/``:
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
- the seed-aggregated tables and Figs. 2, 3, 6a, 6b of ``report_seeds.py`` (headline claims with
  bootstrap intervals, ablations, degenerate-group shares, training curves).
- ``tables/steps_to_target.csv``: for every run with replay, the fraction of its Flow-GRPO
  partner's iterations (same seed, replay fraction 0) it needs to reach that partner's final
  smoothed held-out reward, and the same on the training reward of fresh samples (replayed
  samples are excluded: they were chosen for their high reward); the mean and spread over
  seeds are printed to the log and written under the table.
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import layout as L
from .common import log

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def outputs_for(exp: str) -> dict:
    r = L.results(exp)
    return {
        "curves": f"{r}/figures/training_curves.png",
        "heldout": f"{r}/figures/heldout_geneval.png",
        "grid": f"{r}/figures/samples_base_vs_trained.png",
        "logp": f"{r}/figures/logp_per_step.png",
        "clip": f"{r}/figures/clipped_fraction.png",
        "csv": f"{r}/tables/results.csv",
        "md": f"{r}/tables/results.md",
        "speed": f"{r}/tables/steps_to_target.csv",
        "table1_csv": f"{r}/tables/table1.csv",
        "table1_md": f"{r}/tables/table1.md",
        "table2_csv": f"{r}/tables/table2.csv",
        "table2_md": f"{r}/tables/table2.md",
        # seed-aggregated claims of the paper (report_seeds.py): tables, then Figs. 2, 3, 6a, 6b
        "training_curves": f"{r}/tables/training_curves.csv",
        "degenerate": f"{r}/tables/degenerate_groups.csv",
        "headline_csv": f"{r}/tables/headline.csv",
        "headline_md": f"{r}/tables/headline.md",
        "ablations_csv": f"{r}/tables/ablations.csv",
        "ablations_md": f"{r}/tables/ablations.md",
        "logp_cliff": f"{r}/tables/logp_cliff.csv",
        "fig2": f"{r}/figures/fig2_logp_cliff.png",
        "fig3": f"{r}/figures/fig3_curves.png",
        "fig6a": f"{r}/figures/fig6a_ablations.png",
        "fig6b": f"{r}/figures/fig6b_replay_fraction.png",
    }


def final_inputs(runs: list[str]) -> list[str]:
    """The ``final_eval`` tables a report reads: the base model, then every run's checkpoints."""
    return [L.final_eval("base", "base")] + [L.final_eval(r, c) for c in ("intermediate", "best") for r in runs]


TABLE2_COLUMNS = {"color": "Color", "shape": "Shape", "texture": "Texture", "spatial": "2D-Spatial",
                  "3d_spatial": "3D-Spatial", "numeracy": "Numeracy", "non_spatial": "Non-Spatial",
                  "complex": "Complex"}
PAPER_AVERAGE = ("color", "shape", "spatial", "3d_spatial", "numeracy", "non_spatial")  # Table 2's "Average"


def _cell(row) -> str:
    if row["status"] == "ok":
        return f"{row['value']:.4f}"
    return f"unavailable ({row['reason']})"


def paper_tables(cfg: dict, runs: list[str]):
    """(Table 1, Table 2) as DataFrames of strings (numbers formatted, unavailable with reasons)."""
    import pandas as pd

    from ..formats import tables
    from .final_eval import TABLE1_METRICS, task_metric_name

    task = task_metric_name(cfg)
    t1, t2 = [], []
    for path in final_inputs(runs):
        df = tables.read(path, "final_eval")
        head = {"model": df["model"].iloc[0], "checkpoint": df["checkpoint"].iloc[0],
                "step": 0 if df["checkpoint"].iloc[0] == "base" else int(df["iteration"].iloc[0]) + 1}
        one = {r["metric"]: _cell(r) for _, r in df[df["table"] == "table1"].iterrows()}
        row1 = {**head, task: one.pop(task)}
        for name, col in TABLE1_METRICS.items():
            row1[col] = one.pop(name, "unavailable (not in eval.metrics)")
        row1.update(one)  # further configured metrics, after the paper's
        t1.append(row1)
        two = df[df["table"] == "table2"].set_index("metric")
        row2 = dict(head)
        for c, col in TABLE2_COLUMNS.items():
            row2[col] = _cell(two.loc[c]) if c in two.index else "unavailable (not evaluated)"
        ok = [c for c in PAPER_AVERAGE if c in two.index and two.loc[c, "status"] == "ok"]
        row2["Average"] = (f"{sum(float(two.loc[c, 'value']) for c in ok) / len(ok):.4f}" if len(ok) == len(PAPER_AVERAGE)
                           else "unavailable (needs " + ", ".join(TABLE2_COLUMNS[c] for c in PAPER_AVERAGE) + ")")
        t2.append(row2)
    return pd.DataFrame(t1), pd.DataFrame(t2)


def _markdown_cells(df) -> str:
    """A Markdown table; each distinct "unavailable (<reason>)" becomes "unavailable [n]" with the
    reason once below the table, so a row stays readable (the CSV keeps the full text per cell)."""
    import re

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    reasons: dict[str, int] = {}

    def cell(v) -> str:
        m = re.fullmatch(r"unavailable \((.*)\)", str(v), flags=re.S)
        if m:
            n = reasons.setdefault(m.group(1), len(reasons) + 1)
            return f"unavailable [{n}]"
        return str(v)

    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(v).replace("|", "\\|") for v in r) + " |")
    notes = [f"[{n}] {why}" for why, n in reasons.items()]
    return "\n".join(lines) + "\n" + ("\n" + "  \n".join(notes) + "\n" if notes else "")


def write_paper_tables(cfg: dict, runs: list[str], out: dict):
    from ..formats.atomic import atomic_path, write_text

    t1, t2 = paper_tables(cfg, runs)
    note = ("step: iterations trained (0 = base). intermediate = eval.intermediate or the evaluated iteration "
            "nearest the middle of the run; best = the evaluated iteration with the highest held-out task score "
            "(earliest on ties). Unavailable metrics name the missing model or setting.\n")
    for df, csv, md, title in ((t1, "table1_csv", "table1_md", "Table 1: task metric and unseen metrics"),
                               (t2, "table2_csv", "table2_md", "Table 2: T2I-CompBench++")):
        with atomic_path(out[csv]) as tmp:
            df.to_csv(tmp, index=False)
        write_text(out[md], f"# {title}\n\n" + _markdown_cells(df) + "\n" + note)
    return t1, t2


def smooth(values, window: int = 5):
    """Trailing moving average (shorter windows at the start)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return v
    w = min(window, len(v))
    c = np.convolve(v, np.ones(w) / w, mode="valid")
    return np.concatenate([np.cumsum(v[: w - 1]) / np.arange(1, w), c])


def _eval_summary(path, samples_per_prompt: int | None = None) -> dict:
    """GenEval summary and mean reward of an ``eval`` table; ``samples_per_prompt``: only its first
    samples of each prompt (their noise depends on (eval.seed, prompt, k) alone, so they are the
    images an evaluation with fewer samples per prompt draws)."""
    from ..formats import tables
    from ..geneval import summarize

    df = tables.read(path, "eval")
    if samples_per_prompt is not None:
        df = df[df["sample_index"] < samples_per_prompt]
    out = summarize(list(df["tag"]), list(df["correct"]))
    out["heldout_reward"] = float(df["reward"].mean())
    return out


def degenerate_shares(groups, sources, rewards) -> tuple[float, float]:
    """(share of groups whose rewards all tie, share whose fresh samples' rewards all tie) in one
    iteration. A tied group has zero advantage for every sample: no signal (the paper's
    degenerate groups). The first is what the update sees (a replayed sample can break the tie);
    the second is what on-policy sampling alone would have given those prompts."""
    import numpy as np

    groups, sources, rewards = np.asarray(groups), np.asarray(sources), np.asarray(rewards, dtype=float)
    tied, tied_fresh = [], []
    for g in np.unique(groups):
        m = groups == g
        tied.append(bool(np.all(rewards[m] == rewards[m][0])))
        f = rewards[m & (sources == "fresh")]
        tied_fresh.append(bool(len(f) == 0 or np.all(f == f[0])))
    return float(np.mean(tied)), float(np.mean(tied_fresh))


def base_samples_per_prompt(cfg: dict, runs: list[str]) -> int:
    """The base model is evaluated once, with the first run's ``eval`` settings; an experiment whose
    runs draw fewer held-out samples per prompt (``reproduce``) compares with the base's first
    ones. Other ``eval`` keys that change the images (seed, steps) must equal the base's."""
    from .. import config as C
    from ..errors import ConfigError

    first = C.resolve_run(cfg, list(cfg["runs"])[0])["eval"]
    spp = set()
    for run in runs:
        ec = C.resolve_run(cfg, run)["eval"]
        for key in ("seed", "num_steps"):
            if ec[key] != first[key]:
                raise ConfigError(f"runs.{run}: eval.{key} = {ec[key]} differs from the base evaluation's {first[key]}; "
                                  f"the report compares every run with that one base table")
        spp.add(ec["samples_per_prompt"])
    if len(spp) > 1 or max(spp) > first["samples_per_prompt"]:
        raise ConfigError(f"runs {runs}: eval.samples_per_prompt {sorted(spp)}; expected one value, at most the base "
                          f"evaluation's {first['samples_per_prompt']}")
    return spp.pop()


def collect(cfg: dict, runs: list[str]) -> dict:
    import pandas as pd

    from .. import config as C
    from ..formats import tables

    data = {"base": _eval_summary(L.eval_table("base", 0), base_samples_per_prompt(cfg, runs)), "runs": {}}
    for run in runs:
        rc = C.resolve_run(cfg, run)
        n = rc["train"]["iterations"]
        metrics = pd.concat([tables.read(L.metrics(run, k), "update_metrics") for k in range(n)], ignore_index=True)
        # training reward of fresh samples only: replayed ones were selected for their high reward
        fresh, degenerate = [], []
        for k in range(n):
            smp = tables.read(L.samples(run, k), "samples")
            rew = tables.read(L.rewards(run, k), "rewards")
            if not (smp["sample_id"].to_numpy() == rew["sample_id"].to_numpy()).all():
                raise ValueError(f"{L.rewards(run, k)}: sample ids differ from {L.samples(run, k)}")
            fresh.append(float(rew["reward"][smp["source"].to_numpy() == "fresh"].mean()))
            degenerate.append(degenerate_shares(smp["group"], smp["source"], rew["reward"]))
        metrics["reward_fresh"] = fresh
        metrics["degenerate_share"], metrics["degenerate_share_fresh"] = map(list, zip(*degenerate))
        evals = {k: _eval_summary(L.eval_table(run, k)) for k in L.eval_iterations(rc)}
        if rc["replay"]["fraction"] > 0:  # buffer size, mean stored (decayed) reward, mean age
            stats = []
            for k in range(n - 1):
                b = tables.read(L.buffer(run, k)[1], "buffer")
                stats.append((len(b), float(b["reward"].mean()) if len(b) else math.nan,
                              float((k - b["birth_iteration"]).mean()) if len(b) else math.nan))
            stats.append(stats[-1] if stats else (0, math.nan, math.nan))
            metrics["buffer_size"], metrics["buffer_reward"], metrics["buffer_age"] = map(list, zip(*stats))
        data["runs"][run] = {"cfg": rc, "metrics": metrics, "evals": evals}
    return data


def results_table(data):
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


def _crossing(xs, ys, target):
    """First x where the piecewise-linear curve (xs, ys) reaches target; nan if never."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0)) if y != y0 else float(x)
    return math.nan


def heldout_curve(data, run):
    """(iterations, held-out reward) with the base model at iteration 0, smoothed over 2 points."""
    d = data["runs"][run]
    ks = sorted(d["evals"])
    xs = [0] + [k + 1 for k in ks]
    ys = [data["base"]["heldout_reward"]] + [d["evals"][k]["heldout_reward"] for k in ks]
    return xs, list(smooth(ys, 2))


def steps_to_target(data):
    """Pairs every replay run with the Flow-GRPO run of the same seed."""
    import pandas as pd

    refs = {d["cfg"]["seed"]: r for r, d in data["runs"].items() if d["cfg"]["replay"]["fraction"] == 0}
    rows = []
    for run, d in data["runs"].items():
        ref = refs.get(d["cfg"]["seed"])
        if d["cfg"]["replay"]["fraction"] == 0 or ref is None:
            continue
        n_ref = data["runs"][ref]["cfg"]["train"]["iterations"]
        hx, hy = heldout_curve(data, ref)
        ox, oy = heldout_curve(data, run)
        tr = smooth(data["runs"][ref]["metrics"]["reward_fresh"], 5)
        to = smooth(d["metrics"]["reward_fresh"], 5)
        it = list(range(1, len(to) + 1))
        rows.append({
            "run": run, "reference": ref, "seed": d["cfg"]["seed"],
            "heldout_target": hy[-1], "heldout_iterations": _crossing(ox, oy, hy[-1]),
            "heldout_fraction": _crossing(ox, oy, hy[-1]) / n_ref,
            "train_target": float(tr[-1]), "train_iterations": _crossing(it, list(to), float(tr[-1])),
            "train_fraction": _crossing(it, list(to), float(tr[-1])) / n_ref,
        })
    cols = ["run", "reference", "seed", "heldout_target", "heldout_iterations", "heldout_fraction",
            "train_target", "train_iterations", "train_fraction"]
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
    """Mean and spread over seeds of the fraction of Flow-GRPO's iterations OP-GRPO needs."""
    if speed.empty:
        return "no OP-GRPO/Flow-GRPO pair in this experiment"
    lines = []
    for base_name, g in speed.groupby(speed["run"].str.replace(r"-seed\d+$", "", regex=True)):
        for col in ("heldout_fraction", "train_fraction"):
            v = g[col].to_numpy(dtype=float)
            reached = v[~(v != v)]
            spread = f"{reached.std():.3f}" if len(reached) > 1 else "n/a"
            lines.append(f"{base_name}: {col.split('_')[0]} reward: {len(reached)}/{len(v)} seeds reach Flow-GRPO's "
                         f"final smoothed value; fraction of its iterations mean {reached.mean() if len(reached) else math.nan:.3f} "
                         f"(std {spread}; per seed {', '.join(f'{x:.2f}' for x in v)})")
    return "\n".join(lines)


def _markdown(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def _weight_section(spread) -> str:
    if spread.empty:
        return ""
    return ("\n## Sequence weight of replayed samples\n\nOver all iterations; `weight_std_mean`: the mean of the "
            "per-iteration std (docs/opgrpo.md, \"What the mean reduction implies\").\n\n" + _markdown(spread) + "\n")


def _save(fig, path):
    from ..formats.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def report(cfg: dict, runs: list[str] | None = None, outputs: dict | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from ..formats.atomic import write_text

    runs = runs or list(cfg["runs"])
    out = {**outputs_for("main"), **(outputs or {})}
    for p in out.values():
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    data = collect(cfg, runs)

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
    _save(fig, out["curves"])
    plt.close(fig)

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
    _save(fig, out["heldout"])
    plt.close(fig)

    panels = [("base", L.eval_grid("base", 0))] + [
        (f"{run} (iteration {max(d['evals']) + 1})", L.eval_grid(run, max(d["evals"]))) for run, d in data["runs"].items()
    ]
    from ..formats import tables

    shown = tables.read(L.eval_table("base", 0), "eval")["prompt"].tolist()[: cfg.get("report", {}).get("grid_prompts", 12)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels) + 0.25 * len(shown) / 2))
    for ax, (title, path) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.asarray(Image.open(path)))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    caption = "images in reading order: " + "; ".join(f"{i + 1}. {p}" for i, p in enumerate(shown))
    import textwrap

    fig.text(0.02, 0.005, "\n".join(textwrap.wrap(caption, 120)), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.012 * len(shown) / 2, 1, 1))
    _save(fig, out["grid"])
    plt.close(fig)

    # Figure 2: per-step log-probs of fresh vs replayed samples, averaged over iterations
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
    _save(fig, out["logp"])
    plt.close(fig)

    # clipped fraction of fresh vs replayed samples per run
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(runs)), 4))
    names = list(data["runs"])
    fr = [float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_fresh"])) for r in names]
    rp = [float(np.nanmean(data["runs"][r]["metrics"]["clipfrac_replay"])) if data["runs"][r]["metrics"]["n_replay"].sum()
          else 0.0 for r in names]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, fr, 0.4, label="fresh")
    ax.bar(xs + 0.2, rp, 0.4, label="replayed")
    ax.set_xticks(xs, [f"{r}\n({data['runs'][r]['cfg']['replay']['correction']})" for r in names], fontsize=7)
    ax.set(title="clipped fraction of trained steps", ylabel="fraction clipped")
    ax.legend()
    fig.tight_layout()
    _save(fig, out["clip"])
    plt.close(fig)

    from ..formats.atomic import atomic_path

    table = results_table(data)
    with atomic_path(out["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    speed = steps_to_target(data)
    with atomic_path(out["speed"]) as tmp:
        speed.to_csv(tmp, index=False, float_format="%.4f")
    head = headline(speed)
    clip_lines = "\n".join(f"| {r} | {data['runs'][r]['cfg']['replay']['correction']} | {f:.3f} | {p:.3f} |"
                           for r, f, p in zip(names, fr, rp))
    write_text(out["md"], _markdown(table) + "\n## Steps to Flow-GRPO's final reward\n\n" + head + "\n\n"
               + (_markdown(speed) if not speed.empty else "") + "\n## Clipped fraction\n\n"
               "| run | correction | fresh | replayed |\n|---|---|---|---|\n" + clip_lines + "\n"
               + _weight_section(weight_spread(data)))
    t1, t2 = write_paper_tables(cfg, runs, out)
    from . import report_seeds

    seeds = report_seeds.write(cfg, data, out, _save)
    log.info("headline:\n%s", seeds["headline"].to_string(index=False))
    log.info("Table 1:\n%s", t1.to_string(index=False))
    log.info("results:\n%s", table.to_string(index=False))
    log.info("steps to target:\n%s", head)
    print(table.to_string(index=False))
    print(head)
    return {"table": table, "speed": speed, "data": data, "table1": t1, "table2": t2, **seeds}
