"""Where every artifact lives, relative to the working directory. Used by the Snakefile and by
the stage CLIs, so ``opgrpo rollout --run R --iteration K`` touches exactly the files the
pipeline's rule would.

    runs/prompts/{train,heldout}.jsonl
    runs/prompts/{train,heldout}.embeddings.safetensors   (embed_prompts; real backbones only)
    runs/<run>/init/{policy,optimizer,buffer}.safetensors, buffer.parquet
    runs/<run>/iter_<k>/trajectories.safetensors, samples.parquet, images.safetensors   (rollout)
    runs/<run>/iter_<k>/rewards.parquet                                                 (score)
    runs/<run>/iter_<k>/buffer.safetensors, buffer.parquet                              (buffer_update)
    runs/<run>/iter_<k>/policy.safetensors, optimizer.safetensors, update_metrics.parquet (policy_update)
    runs/<run>/eval/iter_<k>.parquet, iter_<k>.png     (held-out evaluation of the policy after k)
    runs/base/eval.parquet, eval.png                   (the base model, shared by all runs)
    runs/<run>/final/{intermediate,best}.parquet, runs/base/final.parquet   (Table 1/2 metrics)
    runs/<run>/events.out.tfevents.{train,heldout}_<k>  (TensorBoard records, opgrpo_stages/monitor)
The policy *after* iteration k lives in iter_<k>; iteration k samples with the policy of k-1
(or ``init`` for k = 0). ``results/<experiment>/`` holds the report, ``logs/`` the stages' logs.
With ``output_root: <dir>`` in the config (each preset sets its own), runs/, results/ and logs/
are under <dir>; the default "" keeps them in the working directory.
"""

from __future__ import annotations

import os

from .errors import ConfigError

RUNS = "runs"
RESULTS = "results"
LOGS = "logs"


def set_root(root: str | None) -> None:
    """Put runs/, results/ and logs/ under ``root`` (config key ``output_root``; "" = here). Set once
    per process, from the config, before any path is built (Snakefile, CLI)."""
    global RUNS, RESULTS, LOGS
    RUNS, RESULTS, LOGS = (os.path.join(root, d) if root else d for d in ("runs", "results", "logs"))


def results(exp: str) -> str:
    return f"{RESULTS}/{exp}"


def log(name: str) -> str:
    """A stage's log file, ``logs/<name>`` (``name`` may hold Snakemake wildcards)."""
    return f"{LOGS}/{name}"


BENCHMARKED = ("rollout", "score", "buffer_update", "policy_update")  # rules with a `benchmark:` file


def benchmark(run, k, stage: str) -> str:
    """Snakemake's benchmark file of a stage of one iteration (wall seconds; formats/benchmark.py);
    ``run``, ``k`` may be wildcards."""
    return log(f"{run}/iter_{fmt(k)}/{stage}.benchmark.tsv")


def check_iteration(cfg: dict, k: int) -> None:
    """Iteration ``k`` exists in ``cfg``'s run (0 .. train.iterations-1): a request past the end
    is an error, not a silently longer run."""
    n = cfg["train"]["iterations"]
    if not 0 <= int(k) < n:
        raise ConfigError(f"iteration {int(k)} of run {cfg['run']!r} does not exist: train.iterations = {n} "
                          f"(iterations 0..{n - 1}); raise train.iterations to train longer")


def fmt(k) -> str:
    """Iteration number as 5 digits; a string (a Snakemake wildcard such as "{iter}") passes through."""
    return k if isinstance(k, str) else f"{int(k):05d}"


def prompts(split: str) -> str:
    return f"{RUNS}/prompts/{split}.jsonl"


def prompt_embeddings(split: str) -> str:
    return f"{RUNS}/prompts/{split}.embeddings.safetensors"


def iter_dir(run: str, k: int) -> str:
    return f"{RUNS}/{run}/iter_{fmt(k)}"


def state_dir(run: str, k: int) -> str:
    """Directory holding the policy/optimizer/buffer state after iteration k (k = -1: init)."""
    return f"{RUNS}/{run}/init" if not isinstance(k, str) and k < 0 else iter_dir(run, k)


def policy(run, k):
    return f"{state_dir(run, k)}/policy.safetensors"


def optimizer(run, k):
    return f"{state_dir(run, k)}/optimizer.safetensors"


def buffer(run, k):
    return (f"{state_dir(run, k)}/buffer.safetensors", f"{state_dir(run, k)}/buffer.parquet")


def trajectories(run, k):
    return f"{iter_dir(run, k)}/trajectories.safetensors"


def samples(run, k):
    return f"{iter_dir(run, k)}/samples.parquet"


def images(run, k):
    return f"{iter_dir(run, k)}/images.safetensors"


def rewards(run, k):
    return f"{iter_dir(run, k)}/rewards.parquet"


def metrics(run, k):
    return f"{iter_dir(run, k)}/update_metrics.parquet"


def eval_table(run, k):
    return f"{RUNS}/base/eval.parquet" if run == "base" else f"{RUNS}/{run}/eval/iter_{fmt(k)}.parquet"


def eval_grid(run, k):
    return eval_table(run, k).replace(".parquet", ".png")


def events(run, kind, k):
    """TensorBoard event file of one record (``kind`` train or heldout) of iteration k; a run's
    files share its directory, which TensorBoard shows as one run (opgrpo_stages/monitor)."""
    return f"{RUNS}/{run}/events.out.tfevents.{kind}_{fmt(k)}"


def final_eval(run, checkpoint):
    """Table 1/2 metrics of a run's ``intermediate`` or ``best`` checkpoint, or of the base model."""
    return f"{RUNS}/base/final.parquet" if run == "base" else f"{RUNS}/{run}/final/{checkpoint}.parquet"


def eval_iterations(cfg: dict) -> list[int]:
    """Iterations whose policy is evaluated on the held-out set: every ``eval.every`` and the last."""
    n, every = cfg["train"]["iterations"], cfg["eval"]["every"]
    its = list(range(every - 1, n, every))
    if n - 1 not in its:
        its.append(n - 1)
    return its


def stage_paths(stage: str, run: str, k: int) -> dict:
    """Keyword arguments (paths) of a stage function for run ``run``, iteration ``k``."""
    if stage == "rollout":
        return dict(prompts_path=prompts("train"), policy_path=policy(run, k - 1), buffer_paths=buffer(run, k - 1),
                    out_trajectories=trajectories(run, k), out_samples=samples(run, k), out_images=images(run, k),
                    embeddings_path=prompt_embeddings("train"))
    if stage == "score":
        return dict(images_path=images(run, k), samples_path=samples(run, k), out_rewards=rewards(run, k))
    if stage == "buffer_update":
        return dict(buffer_paths=buffer(run, k - 1), trajectories_path=trajectories(run, k),
                    samples_path=samples(run, k), rewards_path=rewards(run, k),
                    out_buffer=buffer(run, k)[0], out_buffer_table=buffer(run, k)[1])
    if stage == "policy_update":
        return dict(policy_path=policy(run, k - 1), optimizer_path=optimizer(run, k - 1),
                    trajectories_path=trajectories(run, k), samples_path=samples(run, k),
                    rewards_path=rewards(run, k), out_policy=policy(run, k), out_optimizer=optimizer(run, k),
                    out_metrics=metrics(run, k), embeddings_path=prompt_embeddings("train"))
    if stage == "init_policy":
        return dict(out_policy=policy(run, -1), out_optimizer=optimizer(run, -1), out_buffer=buffer(run, -1)[0],
                    out_buffer_table=buffer(run, -1)[1])
    if stage == "evaluate":
        return dict(prompts_path=prompts("heldout"), policy_path=None if run == "base" else policy(run, k),
                    optimizer_path=None if run == "base" else optimizer(run, k),
                    out_table=eval_table(run, k), out_grid=eval_grid(run, k),
                    embeddings_path=prompt_embeddings("heldout"))
    raise ValueError(f"unknown stage {stage!r}")
