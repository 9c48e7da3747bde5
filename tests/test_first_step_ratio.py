"""Issue 12 item 4: the first optimizer step of an iteration sees a ratio of exactly 1 for every
trained (sample, step), in bf16, although the rollout computed logp_old in other batch shapes.

The tiny SD3 in bf16 on a CPU: the rollout samples in batches of 4 and the update trains one
sample per forward (guidance 1, so no CFG doubling: a one-row call, whose bf16 kernels differ
from a four-row call's here; on a GPU they may differ between 32 and 16 rows). The test first shows the
premise: the log-prob recomputed in the update's shape differs from the stored logp_old for some
pair, so a ratio against logp_old would not be 1 (c7945f6 fails here)."""

import torch

from conftest import tiny_config
from tiny_models import sd3_model_cfg, tiny_sd3_path  # noqa: F401 (fixture)


def test_first_optimizer_step_ratio_is_exactly_one_in_bf16(tmp_path, monkeypatch, tiny_sd3_path):
    import opgrpo_stages.grpo as grpo
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.formats import tables, trajectories
    from opgrpo_stages.sde import sde_step
    from opgrpo_stages.stages.common import load_backbone
    from opgrpo_stages.stages.embed_prompts import embed_prompts
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.policy_update import policy_update
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout
    from opgrpo_stages.stages.score import score

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(model=sd3_model_cfg(tiny_sd3_path, dtype="bfloat16", guidance_scale=1.0),
                      prompts={"train": {"n": 4}, "heldout": {"n": 1}}, sampling={"num_steps": 3, "batch_size": 4},
                      train={"prompts_per_iteration": 2, "group_size": 4, "microbatch": 1, "minibatches": 2,
                             "drop_zero_advantage": False, "lr": 1e-2})
    cfg["reward"]["terms"] = {"brightness": 1.0}
    cfg = C.resolve_run(cfg, "flowgrpo")
    run = cfg["run"]
    make_prompts(cfg, "train", L.prompts("train"))
    embed_prompts(cfg, prompts_path=L.prompts("train"), out_embeddings=L.prompt_embeddings("train"))
    init_policy(cfg, **L.stage_paths("init_policy", run, 0))
    rollout(cfg, 0, **L.stage_paths("rollout", run, 0))
    score(cfg, 0, **L.stage_paths("score", run, 0))

    # the premise: logp in the update's shape (one row) differs from the rollout's (four rows)
    traj = trajectories.read(L.trajectories(run, 0))
    bb = load_backbone(cfg, L.policy(run, -1), L.prompt_embeddings("train"))
    samples = tables.read(L.samples(run, 0), "samples")
    cond = bb.encode_prompts([{"id": i, "prompt": p} for i, p in zip(samples["prompt_id"], samples["prompt"])])
    sig, sc = [float(s) for s in traj.sigmas], cfg["sampling"]
    n_train = int(traj.train_steps[0].sum())
    differs = 0
    with torch.no_grad():
        for i in range(traj.num_samples):
            for j in range(n_train):
                x = traj.latents[i:i + 1, j]
                v = bb.velocity(x, sig[j], {k: t[i:i + 1] for k, t in cond.items()})
                lp = sde_step(v, x, sig[j], sig[j + 1], noise_level=sc["noise_level"], sigma_max=sig[1],
                              prev_sample=traj.latents[i:i + 1, j + 1]).log_prob
                differs += int(lp[0] != traj.logp_old[i, j])
    assert differs > 0, "bf16 kernels gave the same log-probs for 1 and 4 rows: the test shows nothing here"

    # the update: record every ratio, and which optimizer step it belongs to
    ratios, steps_done = [], [0]
    surrogate, adamw_step = grpo.clipped_surrogate, torch.optim.AdamW.step

    def spy_surrogate(logp, logp_ref, adv, clip_range):
        out = surrogate(logp, logp_ref, adv, clip_range)
        ratios.append((steps_done[0], out[1].detach().clone()))
        return out

    def spy_step(self, *a, **k):
        steps_done[0] += 1
        return adamw_step(self, *a, **k)

    monkeypatch.setattr(grpo, "clipped_surrogate", spy_surrogate)
    monkeypatch.setattr(torch.optim.AdamW, "step", spy_step)
    m = policy_update(cfg, 0, **L.stage_paths("policy_update", run, 0))
    first = torch.cat([r for k, r in ratios if k == 0])
    n = traj.num_samples
    assert m["optimizer_steps"] == 2 and len(first) == (n // 2) * n_train  # every pair of the first minibatch
    assert torch.equal(first, torch.ones_like(first)), f"first-step ratios {first.tolist()}"
    assert m["clipfrac"] <= 0.5  # only the second minibatch can clip
    second = torch.cat([r for k, r in ratios if k == 1])
    assert len(second) == (n - n // 2) * n_train and not torch.equal(second, torch.ones_like(second))
