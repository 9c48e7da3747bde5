"""Stage ``buffer_update``: OP-GRPO's replay buffer of high-reward trajectories.

Rules (paper section 4.1): entries compete by a decayed reward (the paper's "stepwise decay to
the rewards of trajectories in the buffer, so that older samples naturally become easier to
replace"). ``replay.decay_mode: age`` (default): reward = raw_reward - replay.age_penalty * age *
std, age = iteration - birth_iteration of the trajectory (a replayed trajectory that wins again
keeps its birth, so it keeps aging) and std the iteration's reward std, so the rule does not
depend on the reward's offset or scale. ``multiplicative``: every stored reward is multiplied by
``replay.decay`` each iteration and a (re-)inserted trajectory starts from its raw reward. Then
each group offers its highest-reward trajectory. At most one entry per prompt: a prompt already stored is replaced
only by a higher reward; a new prompt is inserted while there is room, else it replaces the
lowest-reward entry if its reward is higher. The previous buffer file is never modified: the
result is a new file. With ``replay.fraction == 0`` (Flow-GRPO) the buffer is carried through
unchanged (still a new file), so the pipeline's shape does not depend on the method.
"""

from __future__ import annotations


def select_candidates(samples, rewards):
    """Row index of the best sample of each group (first one on ties), in group order."""
    import numpy as np

    r = rewards["reward"].to_numpy()
    out = []
    for _g, idx in samples.groupby("group", sort=True).indices.items():
        idx = np.sort(idx)
        out.append(int(idx[np.argmax(r[idx])]))
    return out


DECAY_MODES = ("age", "multiplicative")


def update_buffer(buf, candidates: list[dict], *, capacity: int, decay: float, mode: str = "multiplicative",
                  iteration: int | None = None, age_penalty: float = 0.0, reward_std: float = 0.0):
    """Pure rule application. ``candidates``: dicts with prompt_id, prompt, metadata, tag,
    reward, birth_iteration, latents (S+1, *latent), logp_behavior (S,). Returns a new Buffer.
    ``mode='age'`` needs ``iteration``, ``age_penalty`` and ``reward_std``; ``'multiplicative'``
    uses ``decay``."""
    import pandas as pd
    import torch

    from ..formats.buffer import Buffer

    if mode not in DECAY_MODES:
        raise ValueError(f"unknown buffer decay mode {mode!r}; expected one of {DECAY_MODES}")

    def aged(raw, birth):  # the comparison reward of a trajectory at this iteration
        return float(raw) - age_penalty * (iteration - int(birth)) * reward_std

    entries = []  # list of (row dict, latents, logp)
    for i in range(len(buf)):
        row = buf.table.iloc[i].to_dict()
        row["reward"] = aged(row["raw_reward"], row["birth_iteration"]) if mode == "age" else float(row["reward"]) * decay
        entries.append([row, buf.latents[i], buf.logp_behavior[i]])
    for c in candidates:
        row = {k: c[k] for k in ("prompt_id", "prompt", "metadata", "tag", "birth_iteration")}
        row["reward"] = row["raw_reward"] = float(c["reward"])
        if mode == "age":
            row["reward"] = aged(row["raw_reward"], row["birth_iteration"])
        item = [row, c["latents"], c["logp_behavior"]]
        same = [e for e in entries if e[0]["prompt_id"] == row["prompt_id"]]
        if same:
            if row["reward"] > same[0][0]["reward"]:
                entries[entries.index(same[0])] = item
        elif len(entries) < capacity:
            entries.append(item)
        else:
            low = min(range(len(entries)), key=lambda k: entries[k][0]["reward"])
            if row["reward"] > entries[low][0]["reward"]:
                entries[low] = item
    cols = ["prompt_id", "prompt", "metadata", "tag", "reward", "raw_reward", "birth_iteration"]
    table = pd.DataFrame([{k: e[0][k] for k in cols} for e in entries], columns=cols)
    table = table.astype({"reward": "float64", "raw_reward": "float64", "birth_iteration": "int64"})
    table["row"] = range(len(table))
    table["row"] = table["row"].astype("int64")
    if entries:
        latents = torch.stack([e[1] for e in entries])
        logp = torch.stack([e[2] for e in entries])
    else:
        latents, logp = buf.latents[:0].clone(), buf.logp_behavior[:0].clone()
    return Buffer(table, latents, logp)


def buffer_update(cfg: dict, iteration: int, *, buffer_paths, trajectories_path, samples_path, rewards_path,
                  out_buffer, out_buffer_table) -> None:
    from ..execution import fault
    from ..formats import buffer as buffer_fmt
    from ..formats import header, tables, trajectories
    from .common import log, setup_torch

    setup_torch(cfg)
    buf = buffer_fmt.read(*buffer_paths, expect=header.of(cfg, iteration - 1))
    meta = header.of(cfg, iteration)
    rc = cfg["replay"]
    if rc["fraction"] == 0:
        buffer_fmt.write(out_buffer, out_buffer_table, buf, meta)
        return
    traj = trajectories.read(trajectories_path, expect=meta)
    samples = tables.read(samples_path, "samples", expect=meta)
    rewards = tables.read(rewards_path, "rewards", expect=meta)
    tables.check_aligned(samples_path, samples, rewards_path, rewards)
    trajectories.check_matches_samples(trajectories_path, traj, samples_path, samples)
    cands = []
    for i in select_candidates(samples, rewards):
        s = samples.iloc[i]
        cands.append({
            "prompt_id": s["prompt_id"], "prompt": s["prompt"], "metadata": s["metadata"], "tag": s["tag"],
            "reward": float(rewards["reward"].iloc[i]), "birth_iteration": int(s["birth_iteration"]),
            "latents": traj.latents[i], "logp_behavior": traj.logp_behavior[i],
        })
    new = update_buffer(buf, cands, capacity=rc["capacity"], decay=rc["decay"], mode=rc["decay_mode"],
                        iteration=iteration, age_penalty=rc["age_penalty"],
                        reward_std=float(rewards["reward"].to_numpy().std()))
    fault("buffer_update", "updated", cfg["run"], iteration)
    buffer_fmt.write(out_buffer, out_buffer_table, new, meta)
    log.info("buffer_update %s iter %d: %d entries, mean reward %.3f", cfg["run"], iteration, len(new),
             float(new.table["reward"].mean()) if len(new) else 0.0)
