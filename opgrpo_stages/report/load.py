"""Reading an experiment's run files into the report's in-memory ``data`` (one module reads, the
rest compute from ``data``).

``collect`` returns ``{"base": summary, "runs": {run: {"cfg", "metrics", "evals"}}}``: ``cfg`` the
resolved run configuration; ``metrics`` one row per iteration (``update_metrics`` plus
``reward_fresh``, the degenerate-group shares and, with replay, the buffer's size, mean stored
reward and mean age); ``evals`` iteration -> held-out summary (GenEval per tag, ``overall``,
``heldout_reward``). ``metrics`` also holds ``reward_dataset_drawn``: the mean reward of the groups
whose prompt came from the prompt set (not the buffer).

``stage_seconds`` reads the stages' benchmark files (the `speedup` report's seconds per iteration).
The files each reads are ``outputs.final_inputs`` and ``outputs.speedup_inputs``."""

from __future__ import annotations

import math

from .. import layout as L
from .outputs import final_inputs
from .stats import dataset_drawn_mean, degenerate_shares


def eval_summary(path, samples_per_prompt: int | None = None) -> dict:
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
    out["images"] = len(df)
    return out


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

    data = {"base": eval_summary(L.eval_table("base", 0), base_samples_per_prompt(cfg, runs)), "runs": {}}
    for run in runs:
        rc = C.resolve_run(cfg, run)
        n = rc["train"]["iterations"]
        metrics = pd.concat([tables.read(L.metrics(run, k), "update_metrics") for k in range(n)], ignore_index=True)
        # training reward of fresh samples only: replayed ones were selected for their high reward
        fresh, drawn, degenerate = [], [], []
        for k in range(n):
            smp = tables.read(L.samples(run, k), "samples")
            rew = tables.read(L.rewards(run, k), "rewards")
            if not (smp["sample_id"].to_numpy() == rew["sample_id"].to_numpy()).all():
                raise ValueError(f"{L.rewards(run, k)}: sample ids differ from {L.samples(run, k)}")
            fresh.append(float(rew["reward"][smp["source"].to_numpy() == "fresh"].mean()))
            drawn.append(dataset_drawn_mean(smp["group"], smp["source"], rew["reward"]))
            degenerate.append(degenerate_shares(smp["group"], smp["source"], rew["reward"]))
        metrics["reward_fresh"] = fresh
        metrics["reward_dataset_drawn"] = drawn
        metrics["degenerate_share"], metrics["degenerate_share_fresh"] = map(list, zip(*degenerate))
        evals = {k: eval_summary(L.eval_table(run, k)) for k in L.eval_iterations(rc)}
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


def stage_seconds(cfg: dict, runs: list[str]):
    """Long table, one row per run and iteration: wall seconds of each benchmarked stage (Snakemake's
    benchmark files, ``outputs.benchmarked_stages``) and their sum ``seconds`` (the iteration's
    training time; held-out evaluation not included). A missing or unreadable file is an error
    naming it: the report's rule declares every one as an input."""
    import pandas as pd

    from .. import config as C
    from ..formats.benchmark import seconds
    from .outputs import benchmarked_stages

    rows = []
    for run in runs:
        n = C.resolve_run(cfg, run)["train"]["iterations"]
        for k in range(n):
            row = {"run": run, "iteration": k}
            for stage in benchmarked_stages(k, n):
                row[f"seconds_{stage}"] = seconds(L.benchmark(run, k, stage))
            row["seconds"] = sum(v for key, v in row.items() if key.startswith("seconds_"))
            rows.append(row)
    return pd.DataFrame(rows)


def final_evals(runs: list[str]) -> list:
    """The ``final_eval`` tables of ``final_inputs(runs)``, in that order."""
    from ..formats import tables

    return [tables.read(path, "final_eval") for path in final_inputs(runs)]


def heldout_prompts(n: int) -> list[str]:
    """The first ``n`` prompts of the base model's held-out evaluation (the sample grid's order)."""
    from ..formats import tables

    return tables.read(L.eval_table("base", 0), "eval")["prompt"].tolist()[:n]
