"""Stage ``rollout``: the iteration's policy samples G trajectories for each chosen prompt.

Inputs: the train prompt set, the policy of the previous iteration, the previous replay buffer.
Outputs: ``trajectories.safetensors``, ``samples.parquet``, ``images.safetensors``.

With ``replay.fraction > 0`` (OP-GRPO) a share of the groups comes from the buffer: G-1 fresh
trajectories plus the stored one, kept for its first ``replay.truncation`` steps and regenerated
by the current policy after that (``logp_old`` of the kept steps is recomputed under the current
policy, ``logp_behavior`` keeps the stored values). ``replay.regenerate: ode`` (the paper's Eq. 13
with Eq. 2) regenerates the rest with deterministic Euler steps, which have no density: they get
log-prob 0 and are not trained; ``sde`` draws them with the SDE and trains them like fresh steps.
Group order and in-group order are shuffled (per run). With ``seed_streams: common`` (the
default) the dataset prompts of an iteration and every slot's initial and step noise derive from
(seed, iteration, slot) alone, so Flow-GRPO and OP-GRPO of one seed draw the same prompts with the
same noise (docs/opgrpo.md "Common random numbers").
"""

from __future__ import annotations

import json
import math

from ..formats import buffer as buffer_fmt
from ..formats import header
from ..formats import images as images_fmt
from ..formats import prompts as prompts_fmt
from ..formats import tables, trajectories
from ..execution import fault
from ..sampling import per_sample_noise, sample_sde
from ..sde import num_train_steps
from ..seeding import COMMON, derive_seed, numpy_rng, stream_run
from .common import load_backbone, log, progress, setup_torch


def plan_groups(cfg: dict, iteration: int, prompts: list[dict], buf) -> list[dict]:
    """Which prompts this iteration samples, and which groups replay a buffer entry. Each group
    carries ``noise_key``, the part of its samples' noise seeds that names its slot."""
    if cfg.get("seed_streams", "common") == "per_run":
        return _plan_groups_per_run(cfg, iteration, prompts, buf)
    run, seed = cfg["run"], cfg["seed"]
    rng = numpy_rng(seed, run, iteration, "rollout-replay")  # the buffer is the run's own
    p = cfg["train"]["prompts_per_iteration"]
    n_replay = _n_replay(cfg, rng, buf)
    groups = _replay_groups(rng, buf, n_replay)
    for r, grp in enumerate(groups):
        grp["noise_key"] = ("replay", r)
    replayed = {grp["prompt"]["id"] for grp in groups}
    # common random numbers: the dataset's order this iteration depends on (seed, iteration) only;
    # Flow-GRPO takes its first P prompts, OP-GRPO the first P - n_replay that it does not replay,
    # and a prompt's noise follows its place in that order, so both arms sample it identically
    order = numpy_rng(seed, COMMON, iteration, "rollout-prompts").permutation(len(prompts))
    fresh = [(pos, int(i)) for pos, i in enumerate(order) if prompts[int(i)]["id"] not in replayed]
    _check_pool(p, n_replay, len(fresh))
    fresh = fresh[: p - n_replay]
    groups = [{"prompt": prompts[i], "replay_row": None, "noise_key": ("fresh", pos)} for pos, i in fresh] + groups
    order = numpy_rng(seed, run, iteration, "rollout-groups").permutation(len(groups))  # per run, like the update's
    return [groups[int(i)] for i in order]


def _n_replay(cfg: dict, rng, buf) -> int:
    p, frac = cfg["train"]["prompts_per_iteration"], cfg["replay"]["fraction"]
    if not (frac > 0 and buf is not None and len(buf) > 0):
        return 0
    want = frac * p  # stochastic rounding keeps the expected share exact
    n_replay = int(math.floor(want)) + int(rng.random() < want - math.floor(want))
    return min(n_replay, len(buf), p)


def _replay_groups(rng, buf, n_replay: int) -> list[dict]:
    groups = []
    if n_replay:
        rows = rng.choice(len(buf), size=n_replay, replace=False)
        for r in sorted(int(r) for r in rows):
            entry = buf.table.iloc[r]
            meta = json.loads(entry["metadata"])
            groups.append({"prompt": {**meta, "id": entry["prompt_id"]}, "replay_row": r})
    return groups


def _check_pool(p: int, n_replay: int, available: int) -> None:
    """``available``: the train prompts not replayed this iteration."""
    if available < p - n_replay:
        from ..errors import ConfigError

        raise ConfigError(f"train.prompts_per_iteration = {p} exceeds the {available} available train prompts")


def _plan_groups_per_run(cfg: dict, iteration: int, prompts: list[dict], buf) -> list[dict]:
    """``seed_streams: per_run``: the streams before issue 21, every draw seeded with the run's name
    (one stream for the replay draws, the dataset draw and the group order)."""
    run, seed = cfg["run"], cfg["seed"]
    rng = numpy_rng(seed, run, iteration, "rollout-plan")
    p = cfg["train"]["prompts_per_iteration"]
    n_replay = _n_replay(cfg, rng, buf)
    groups = _replay_groups(rng, buf, n_replay)
    replay_prompt_ids = {grp["prompt"]["id"] for grp in groups}
    pool = [i for i, q in enumerate(prompts) if q["id"] not in replay_prompt_ids]
    _check_pool(p, n_replay, len(pool))
    for i in rng.choice(len(pool), size=p - n_replay, replace=False):
        groups.append({"prompt": prompts[pool[int(i)]], "replay_row": None})
    order = rng.permutation(len(groups))
    return [{**groups[int(i)], "noise_key": (g,)} for g, i in enumerate(order)]


def rollout(cfg: dict, iteration: int, *, prompts_path, policy_path, buffer_paths, out_trajectories,
            out_samples, out_images, embeddings_path=None) -> None:
    from ..execution import data_parallel

    with data_parallel(cfg) as dp:
        _rollout(cfg, iteration, dp, prompts_path=prompts_path, policy_path=policy_path, buffer_paths=buffer_paths,
                 out_trajectories=out_trajectories, out_samples=out_samples, out_images=out_images,
                 embeddings_path=embeddings_path)


def _rollout(cfg, iteration, dp, *, prompts_path, policy_path, buffer_paths, out_trajectories, out_samples,
             out_images, embeddings_path=None) -> None:
    import pandas as pd
    import torch

    setup_torch(cfg)
    run, seed = cfg["run"], cfg["seed"]
    g_size = cfg["train"]["group_size"]
    sc = cfg["sampling"]
    prompts = prompts_fmt.read(prompts_path)
    buf = buffer_fmt.read(*buffer_paths, expect=header.of(cfg, iteration - 1)) if buffer_paths else None
    backbone = load_backbone(cfg, policy_path, embeddings_path, expect=header.of(cfg, iteration - 1))
    sigmas = backbone.sigmas(sc["num_steps"])
    n_steps = sc["num_steps"]
    t_off = cfg["replay"]["truncation"] or n_steps

    groups = plan_groups(cfg, iteration, prompts, buf)
    rng = numpy_rng(seed, run, iteration, "rollout-order")
    rows, seeds, kept_rows = [], [], []
    for g, grp in enumerate(groups):
        q = grp["prompt"]
        slots = ["fresh"] * g_size
        if grp["replay_row"] is not None:
            slots[-1] = "replay"
            slots = [slots[int(i)] for i in rng.permutation(g_size)]
        for j, src in enumerate(slots):
            rows.append({
                "sample_id": f"{iteration:05d}-{g:03d}-{j:02d}",
                "prompt_id": q["id"],
                "prompt": q["prompt"],
                "metadata": prompts_fmt.metadata_json(q),
                "tag": q.get("tag", "none"),
                "group": g,
                "source": src,
                "birth_iteration": int(buf.table.iloc[grp["replay_row"]]["birth_iteration"]) if src == "replay" else iteration,
                "kept_steps": t_off if src == "replay" else 0,
            })
            # per_run: (run, group position, slot); common: (seed, iteration, the group's slot, slot)
            seeds.append(derive_seed(seed, stream_run(cfg), iteration, "rollout", *grp["noise_key"], j))
            kept_rows.append(grp["replay_row"] if src == "replay" else -1)
    samples = pd.DataFrame(rows).astype({"group": "int64", "birth_iteration": "int64", "kept_steps": "int64"})

    # data parallel: this process runs a block of the 1-process run's forward batches, so every
    # sample is bit-identical whatever the number of processes
    bs = sc["batch_size"]
    mine = dp.shard(math.ceil(len(rows) / bs))
    mine = slice(mine.start * bs, min(mine.stop * bs, len(rows)))
    init, step_noise = per_sample_noise(backbone, seeds[mine], n_steps)
    kept_steps = torch.tensor(samples["kept_steps"].to_numpy()[mine], dtype=torch.long)
    # regenerate ode: a replayed sample's steps from t_off on are Euler steps (never for fresh ones)
    regen_ode = cfg["replay"]["regenerate"] == "ode"
    ode_from = torch.where(kept_steps > 0, kept_steps, n_steps) if regen_ode else None
    kept_latents = None
    if (kept_steps > 0).any():
        kept_latents = torch.zeros((len(kept_steps), n_steps + 1, *backbone.latent_shape))
        for n, r in enumerate(kept_rows[mine]):
            if r >= 0:
                kept_latents[n] = buf.latents[r]
    cond = backbone.encode_prompts([{"id": r["prompt_id"], "prompt": r["prompt"]} for r in rows[mine]])
    latents, logp_old = sample_sde(
        backbone, cond, init, step_noise, sigmas, noise_level=sc["noise_level"], kind=sc["sde"],
        reduction=sc["logp_reduction"], batch_size=sc["batch_size"], kept_latents=kept_latents,
        kept_steps=kept_steps, ode_from=ode_from, progress=progress, cps_logp=sc["cps_logp"],
    )
    fault("rollout", "sampled", run, iteration)
    images = backbone.decode(latents[:, -1])
    latents, logp_old, images = dp.gather_cat(latents, logp_old, images)
    if not dp.is_main:
        return
    logp_behavior = logp_old.clone()
    for n, r in enumerate(kept_rows):
        if r >= 0:
            logp_behavior[n, :t_off] = buf.logp_behavior[r, :t_off]
    train_steps = torch.zeros((len(rows), n_steps), dtype=torch.bool)
    train_steps[:, : num_train_steps(n_steps, cfg["train"]["timestep_fraction"])] = True
    if regen_ode:
        for n, r in enumerate(kept_rows):
            if r >= 0:
                train_steps[n, t_off:] = False  # deterministic steps: nothing to train

    meta = {"run": run, "iteration": iteration, "noise_level": sc["noise_level"], "sde": sc["sde"],
            "logp_reduction": sc["logp_reduction"], "backbone": backbone.name}
    traj = trajectories.Trajectories(latents, sigmas, logp_old, logp_behavior, train_steps, meta)
    trajectories.write(out_trajectories, traj)
    fault("rollout", "between_outputs", run, iteration)  # first output complete, the others missing
    images_fmt.write(out_images, images, header.of(cfg, iteration))
    tables.write(out_samples, samples, "samples", header.of(cfg, iteration))
    log.info("rollout %s iter %d: %d groups x %d (%d replayed)", run, iteration, len(groups), g_size,
             int((samples["source"] == "replay").sum()))
