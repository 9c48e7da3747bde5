"""Stage ``policy_update``: one GRPO (Flow-GRPO) / OP-GRPO update of the policy.

Inputs: the previous policy and optimizer state, the iteration's trajectories, samples and
rewards. Outputs: the new policy, the new optimizer state, ``update_metrics.parquet``.

Per trained step t of sample i: ratio r = p_theta / p_ref with p_ref = p_old (Flow-GRPO;
OP-GRPO ``sequence`` and ``none``) or, for kept replayed steps, p_behavior (``per_step``, the
naive substitution the paper rejects); loss max(-A r, -A clip(r, 1-eps, 1+eps)), multiplied for
``sequence`` by the detached weight w_i = exp(sum over kept steps of logp_old - logp_behavior).
Losses are averaged over samples and trained steps; gradients accumulate over one minibatch,
then AdamW steps after grad-norm clipping. A non-finite loss or gradient stops the stage before
anything is written.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import OpgrpoError


class NumericalError(OpgrpoError, FloatingPointError):
    """A non-finite loss or gradient: the stage stops before writing anything."""


_REMEDY = ("Set replay.max_weight (caps the off-policy sequence weight) or lower train.lr in the config, "
           "then rerun the same command: finished iterations are kept (README: When things go wrong).")


def _weights_and_refs(cfg, traj, samples):
    import torch

    from ..grpo import sequence_weights

    n, s = traj.logp_old.shape
    kept = torch.arange(s).view(1, s) < torch.tensor(samples["kept_steps"].to_numpy()).view(n, 1)
    mode = cfg["replay"]["correction"]
    ref = traj.logp_old.clone()
    if mode == "per_step":
        ref = torch.where(kept, traj.logp_behavior, traj.logp_old)
    w = torch.ones(n)
    if mode == "sequence":
        w = sequence_weights(traj.logp_old, traj.logp_behavior, kept)
    n_capped = 0
    cap = cfg["replay"]["max_weight"]
    if cap is not None:
        n_capped = int((w > cap).sum())
        w = w.clamp(max=cap)
    return w, ref, kept, n_capped


def policy_update(cfg: dict, iteration: int, *, policy_path, optimizer_path, trajectories_path, samples_path,
                  rewards_path, out_policy, out_optimizer, out_metrics, embeddings_path=None) -> dict:
    from ..distributed import data_parallel

    with data_parallel(cfg) as dp:
        return _policy_update(cfg, iteration, dp, policy_path=policy_path, optimizer_path=optimizer_path,
                              trajectories_path=trajectories_path, samples_path=samples_path,
                              rewards_path=rewards_path, out_policy=out_policy, out_optimizer=out_optimizer,
                              out_metrics=out_metrics, embeddings_path=embeddings_path)


def _policy_update(cfg, iteration, dp, *, policy_path, optimizer_path, trajectories_path, samples_path,
                   rewards_path, out_policy, out_optimizer, out_metrics, embeddings_path=None) -> dict:
    import pandas as pd

    from ..faults import fault
    from ..formats import policy as policy_fmt
    from ..formats import header, tables, trajectories
    from ..grpo import clipped_surrogate, effective_sample_size, group_advantages, kl_to_reference
    from ..sde import sde_step, transition_mean
    from ..seeding import numpy_rng
    from .common import load_backbone, log, progress, setup_torch

    torch = setup_torch(cfg)
    tc, sc = cfg["train"], cfg["sampling"]
    traj = trajectories.read(trajectories_path, expect=header.of(cfg, iteration))
    samples = tables.read(samples_path, "samples", expect=header.of(cfg, iteration))
    rewards = tables.read(rewards_path, "rewards", expect=header.of(cfg, iteration))
    tables.check_aligned(samples_path, samples, rewards_path, rewards)
    trajectories.check_matches_samples(trajectories_path, traj, samples_path, samples)

    backbone = load_backbone(cfg, policy_path, embeddings_path, expect=header.of(cfg, iteration - 1))
    params = backbone.trainable_parameters()
    names = list(params)
    opt = torch.optim.AdamW(list(params.values()), lr=tc["lr"], betas=tuple(tc["betas"]), eps=tc["adam_eps"],
                            weight_decay=tc["weight_decay"])
    policy_fmt.check_optimizer(optimizer_path, expect=header.of(cfg, iteration - 1))
    ema = policy_fmt.read_optimizer_into(optimizer_path, opt, names)

    adv = torch.as_tensor(group_advantages(rewards["reward"].to_numpy(), samples["group"].to_numpy(),
                                           std_mode=tc["std_mode"], clip=tc["adv_clip_max"]), dtype=torch.float32)
    w, ref_logp, kept, n_capped = _weights_and_refs(cfg, traj, samples)
    replay = torch.tensor((samples["source"] == "replay").to_numpy())
    cond = backbone.encode_prompts([{"id": i, "prompt": p} for i, p in zip(samples["prompt_id"], samples["prompt"])])
    sig = [float(v) for v in traj.sigmas]
    steps = [j for j in range(traj.num_steps) if bool(traj.train_steps[:, j].all())]
    n = traj.num_samples
    perm = numpy_rng(cfg["seed"], cfg["run"], iteration, "policy_update").permutation(n)
    minibatches = [torch.as_tensor(mb) for mb in np.array_split(perm, min(tc["minibatches"], n))]

    clipped = torch.zeros(n, traj.num_steps)
    sq_logratio = torch.zeros(n, traj.num_steps)
    kl_sum, loss_sum, grad_norms = 0.0, 0.0, []
    for mb_i, mb in enumerate(progress(minibatches, "update")):
        opt.zero_grad(set_to_none=True)
        denom = len(mb) * len(steps)  # the whole minibatch's count, in every process
        chunks = torch.split(mb, tc["microbatch"])
        for chunk in chunks[dp.shard(len(chunks))]:  # data parallel: this process's microbatches
            c = {k: v[chunk] for k, v in cond.items()}
            for j in steps:
                x, x_next = traj.latents[chunk, j], traj.latents[chunk, j + 1]
                v = backbone.velocity(x, sig[j], c)
                st = sde_step(v, x, sig[j], sig[j + 1], noise_level=sc["noise_level"], sigma_max=sig[1],
                              prev_sample=x_next, kind=sc["sde"], reduction=sc["logp_reduction"])
                per_sample, ratio, clip_mask = clipped_surrogate(st.log_prob, ref_logp[chunk, j], adv[chunk],
                                                                 tc["clip_range"])
                loss = (w[chunk] * per_sample).sum() / denom
                if tc["kl_beta"] > 0:
                    with torch.no_grad(), backbone.reference():
                        v_ref = backbone.velocity(x, sig[j], c)
                    mean_ref = transition_mean(x, v_ref, sig[j], sig[j + 1], sc["noise_level"], sig[1], sc["sde"])
                    kl = kl_to_reference(st.mean, mean_ref, st.std)
                    loss = loss + tc["kl_beta"] * kl.sum() / denom
                    kl_sum += float(kl.sum())
                if not torch.isfinite(loss):
                    raise NumericalError(
                        f"policy_update iteration {iteration}, optimizer step {mb_i + 1} of {len(minibatches)}: "
                        f"loss is {float(loss)} at sampler step {j}; no policy written. {_REMEDY}"
                    )
                loss.backward()
                loss_sum += loss.item()
                clipped[chunk, j] = clip_mask.float()
                sq_logratio[chunk, j] = (st.log_prob.detach() - traj.logp_old[chunk, j]) ** 2
        dp.all_reduce_grads(params.values())
        gn = torch.nn.utils.clip_grad_norm_(list(params.values()), tc["max_grad_norm"])
        if not torch.isfinite(gn):
            raise NumericalError(
                f"policy_update iteration {iteration}, optimizer step {mb_i + 1} of {len(minibatches)}: "
                f"gradient norm is {float(gn)}; no policy written. {_REMEDY}"
            )
        grad_norms.append(float(gn))
        opt.step()
        fault("policy_update", "step", cfg["run"], iteration)
        if tc["ema"]["enabled"]:
            d = tc["ema"]["decay"]
            with torch.no_grad():
                for k, p in params.items():
                    ema[k] = ema[k] * d + p.detach() * (1 - d) if k in ema else p.detach().clone()

    loss_sum, kl_sum = dp.sum(loss_sum, kl_sum)
    dp.sum_(clipped, sq_logratio)  # each sample's row was filled by exactly one process
    steps_t = torch.as_tensor(steps)
    fresh = ~replay
    r = rewards["reward"].to_numpy()
    metrics = {
        "iteration": iteration,
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std()),
        "loss": loss_sum,
        "approx_kl": float(0.5 * sq_logratio[:, steps_t].mean()),
        "kl": kl_sum / max(1, n * len(steps)),
        "clipfrac": float(clipped[:, steps_t].mean()),
        "clipfrac_fresh": float(clipped[fresh][:, steps_t].mean()) if fresh.any() else math.nan,
        "clipfrac_replay": float(clipped[replay][:, steps_t].mean()) if replay.any() else math.nan,
        "grad_norm": float(np.mean(grad_norms)),
        "adv_abs_mean": float(adv.abs().mean()),
        "n_replay": int(replay.sum()),
        "weight_mean": float(w[replay].mean()) if replay.any() else 1.0,
        "weight_max": float(w[replay].max()) if replay.any() else 1.0,
        "weight_ess": effective_sample_size(w[replay]) if replay.any() else 0.0,
        "weight_capped": n_capped,
        "optimizer_steps": len(minibatches),
    }
    for col in rewards.columns:
        if col not in ("sample_id", "reward"):
            metrics[f"train_{col}"] = float(rewards[col].mean())
    for j in range(traj.num_steps):
        metrics[f"logp_fresh_s{j}"] = float(traj.logp_old[fresh, j].mean()) if fresh.any() else math.nan
        # replayed samples under the current (old) policy: the paper's Figure 2 quantity
        metrics[f"logp_replay_s{j}"] = float(traj.logp_old[replay, j].mean()) if replay.any() else math.nan
        metrics[f"logp_replay_behavior_s{j}"] = float(traj.logp_behavior[replay, j].mean()) if replay.any() else math.nan
    df = pd.DataFrame([metrics])
    df["iteration"] = df["iteration"].astype("int64")

    if not dp.is_main:
        return metrics
    meta = {"run": cfg["run"], "iteration": iteration, "backbone": backbone.name}
    policy_fmt.write_policy(out_policy, backbone.policy_state_dict(), meta)
    policy_fmt.write_optimizer(out_optimizer, opt, names, ema if tc["ema"]["enabled"] else None, meta)
    tables.write(out_metrics, df, "update_metrics", header.of(cfg, iteration))
    log.info("policy_update %s iter %d: reward %.3f clipfrac %.3f grad %.3f", cfg["run"], iteration,
             metrics["reward_mean"], metrics["clipfrac"], metrics["grad_norm"])
    return metrics
