"""Cluster resources of each stage, derived from the run's config (profiles/slurm).

A stage's expected time is its model compute (FLOPs from the config's sample counts, steps and
the backbone's per-call cost ``cluster.tflop_per_forward`` / ``tflop_per_decode``) divided by
the throughput the user measured once for the site (``cluster.tflops``, sustained TFLOP/s per
GPU, e.g. from ``benchmarks/sd35_gpu.py``), plus ``cluster.overhead_s`` (file I/O, policy
swap; models stay loaded in the job's resident worker). Its Slurm ``runtime`` is
``cluster.walltime_factor`` times that; Snakemake sums the runtimes of a group job's stages, so a
job asks for about ``walltime_factor`` times its expected length, not 60 minutes per stage.

FLOP model (one sample; guided = both CFG branches in one call):
  rollout        num_steps guided forwards + one decode
  policy_update  trained steps x (forward+backward + a reference forward when kl_beta > 0);
                 forward+backward = ``TRAIN_FACTOR`` forwards (LoRA: 9.54 / 4.45 TFLOP, counted with
                 FlopCounterMode on SD3.5-M, issue 11; full fine-tuning: 3, weight gradients too)
  evaluate       eval.num_steps guided forwards + one decode per held-out image, plus scoring
  score          ``cluster.reward_s_per_image`` per image
"""

from __future__ import annotations

import math

TRAIN_FACTOR = {"lora": 9.54 / 4.45, "full": 3.0}
STAGES = ("init_policy", "rollout", "score", "buffer_update", "policy_update", "evaluate")


def _samples(cfg: dict) -> int:
    return int(cfg["train"]["prompts_per_iteration"]) * int(cfg["train"]["group_size"])


def _trained_steps(cfg: dict) -> int:
    from ..sde import num_train_steps

    return num_train_steps(int(cfg["sampling"]["num_steps"]), float(cfg["train"]["timestep_fraction"]))


def heldout_images(cfg: dict) -> int:
    """Held-out images one evaluation samples (the prompt count from the config's prompt set;
    ``cluster.heldout_prompts`` when the set is a file not known before it is read)."""
    n = cfg["cluster"].get("heldout_prompts")
    ps = cfg["prompts"]["heldout"]
    if n is None and ps.get("source") == "packaged":
        from ..prompts.catalog import count

        n = count(ps["name"])
    if n is None:
        n = ps.get("n", 0) or 0
    return int(n) * int(cfg["eval"].get("samples_per_prompt", 1))


def expected_seconds(cfg: dict, stage: str) -> float:
    """Expected wall time of one stage of one iteration on the job's GPUs."""
    cc = cfg["cluster"]
    d = cfg["distributed"]
    gpus = max(1, int(d.get("nodes", 1)) * int(d["processes"])) if stage in ("rollout", "score", "policy_update", "evaluate") else 1  # on every rank
    rate = float(cc["tflops"]) * gpus  # TFLOP/s
    fwd, dec = float(cc["tflop_per_forward"]), float(cc["tflop_per_decode"])
    n = _samples(cfg)
    if stage == "rollout":
        tflop = n * (int(cfg["sampling"]["num_steps"]) * fwd + dec)
    elif stage == "policy_update":
        per_step = fwd * TRAIN_FACTOR.get(cfg["model"].get("trainable", "full"), 3.0)
        if float(cfg["train"]["kl_beta"]) > 0:
            per_step += fwd
        tflop = n * _trained_steps(cfg) * per_step
    elif stage == "evaluate":
        m = heldout_images(cfg)
        tflop = m * (int(cfg["eval"]["num_steps"]) * fwd + dec)
        return cc["overhead_s"] + tflop / rate + m * float(cc["reward_s_per_image"])
    elif stage == "score":
        return cc["overhead_s"] + n * float(cc["reward_s_per_image"])
    else:
        tflop = 0.0
    return float(cc["overhead_s"]) + tflop / rate


def runtime_minutes(cfg: dict, stage: str) -> int:
    """Slurm ``runtime`` of one stage: ``walltime_factor`` x expected, in whole minutes (>= 1)."""
    return max(1, math.ceil(float(cfg["cluster"]["walltime_factor"]) * expected_seconds(cfg, stage) / 60))


def iteration_seconds(cfg: dict) -> float:
    """Expected length of one training iteration inside a job (stages one after the other)."""
    return sum(expected_seconds(cfg, s) for s in ("rollout", "score", "buffer_update", "policy_update"))


def _latent_numel(cfg: dict) -> int:
    """Latent elements of one sample: 16 channels at 1/8 resolution (SD3, Wan; Wan's frames at
    1/4), the tiny model's pixels otherwise."""
    m = cfg["model"]
    if m.get("backbone") in ("sd3", "wan"):
        frames = (int(m.get("num_frames", 1) or 1) - 1) // 4 + 1 if m["backbone"] == "wan" else 1
        return 16 * frames * (int(m["height"]) // 8) * (int(m["width"]) // 8)
    size = int((cfg.get("world") or {}).get("image_size", 32))
    return 3 * size * size


DATA_PARALLEL = ("rollout", "score", "policy_update", "evaluate")  # on every rank (execution/ranks.py)


def ranks_per_node(cfg: dict) -> int:
    return int(cfg["distributed"]["processes"])


def mem_mb(cfg: dict, stage: str) -> int:
    """Host memory (``--mem``, per node) of a stage: ``cluster.host_mem_gb`` (models, libraries) per
    rank process on the node, plus the iteration's tensors (trajectories and images) rank 0 holds
    twice (read and written) and the other ranks hold once between them (their shares)."""
    n = _samples(cfg)
    traj = n * (int(cfg["sampling"]["num_steps"]) + 1) * _latent_numel(cfg) * 4
    m = cfg["model"]
    frames = int(m.get("num_frames", 1) or 1)
    images = n * frames * int(m.get("height", 0) or 0) * int(m.get("width", 0) or 0) * 3
    held = traj + images if stage in ("rollout", "score", "buffer_update", "policy_update") else 0
    ranks = ranks_per_node(cfg) if stage in DATA_PARALLEL else 1
    world = ranks * int(cfg["distributed"].get("nodes", 1))
    factor = 2 + (1 if stage in DATA_PARALLEL and world > 1 else 0)
    return int(ranks * float(cfg["cluster"]["host_mem_gb"]) * 1024 + factor * held / 2**20)


def cpus_per_task(cfg: dict, stage: str) -> int:
    """CPUs of a stage's job (per node): ``cluster.cpus_per_rank`` for every rank on the node (the
    ranks' srun step gives each rank its share, execution/ranks.py). ``buffer_update`` runs beside
    ``policy_update`` in the same job, and Snakemake sums the CPUs of a group job's parallel stages:
    it asks none of its own (the plugin asks at least 1 when it runs alone)."""
    if stage == "buffer_update":
        return 0
    per_rank = int(cfg["cluster"]["cpus_per_rank"])
    return per_rank * (ranks_per_node(cfg) if stage in DATA_PARALLEL else 1)


def gpu_resources(cfg: dict, multi_node: bool) -> dict:
    """Slurm resources of a data-parallel stage (rollout, policy_update). ``multi_node`` (some run
    of the config spans nodes): ``nodes`` = N and ``gres: gpu:M`` (M GPUs on every node; ``--gpus``
    would be a total that Slurm may place unevenly) with ``gpu`` 0, and every stage of a training
    job carries the same ``gres`` (Snakemake requires a string resource to agree within a group
    job; :func:`training_gres`). Otherwise ``gpu`` = ``distributed.processes`` on ``nodes: 1``
    (sbatch may otherwise spread ``--gpus=M`` over nodes, and the ranks assume one node)."""
    d = cfg["distributed"]
    n, m = int(d.get("nodes", 1)), int(d["processes"])
    if not multi_node:
        return {"gpu": m, "nodes": 1}
    return {"gpu": 0, "nodes": n, "gres": training_gres(cfg)}


def training_gres(cfg: dict) -> str:
    """``gpu:M``, or ``gpu:<model>:M`` with ``cluster.gpu_model`` (the plugin's own ``gpu_model``
    would add ``--gpus=<model>:0`` beside the gres of a multi-node job: it is cleared there)."""
    model = cfg["cluster"].get("gpu_model")
    m = int(cfg["distributed"]["processes"])
    return f"gpu:{model}:{m}" if model else f"gpu:{m}"


def rule_resources(stage: str, cfg_of, multi_node: bool, data_parallel: bool = False) -> dict:
    """A rule's ``resources:``, as callables of its wildcards (``cfg_of(run)`` gives the run's
    config): runtime (minutes), host memory and CPUs of the stage (a group job sums its stages'
    runtimes); with ``multi_node`` every training stage carries the same ``gres`` (a string
    resource must agree across a group job's stages) and no ``gpu_model``; ``data_parallel``
    stages (on every rank) ask one GPU per rank, on ``distributed.nodes`` nodes (:func:`gpu_resources`)."""
    res = dict(runtime=lambda w: runtime_minutes(cfg_of(w.run), stage),
               mem_mb=lambda w: mem_mb(cfg_of(w.run), stage))
    if stage in STAGES:
        res["cpus_per_task"] = lambda w: cpus_per_task(cfg_of(w.run), stage)
    if multi_node and stage != "evaluate":
        res["gres"] = lambda w: training_gres(cfg_of(w.run))
        res["gpu_model"] = ""
    if data_parallel:
        keys = ("gpu", "nodes", "gres") if multi_node else ("gpu", "nodes")
        res.update({k: (lambda w, k=k: gpu_resources(cfg_of(w.run), multi_node)[k]) for k in keys})
    return res
