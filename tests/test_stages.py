"""The stages as plain functions on files: one iteration end to end, exact ratios, determinism."""

import hashlib

import pytest
import torch

from opgrpo_stages import layout as L
from opgrpo_stages.formats import tables, trajectories
from opgrpo_stages.stages.buffer_update import buffer_update
from opgrpo_stages.stages.init_policy import init_policy
from opgrpo_stages.stages.policy_update import policy_update
from opgrpo_stages.stages.prompts import make_prompts
from opgrpo_stages.stages.rollout import rollout
from opgrpo_stages.stages.score import score


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run_iteration(cfg, k):
    run = cfg["run"]
    if k == 0:
        init_policy(cfg, **L.stage_paths("init_policy", run, 0))
    rollout(cfg, k, **L.stage_paths("rollout", run, k))
    score(cfg, k, **L.stage_paths("score", run, k))
    buffer_update(cfg, k, **L.stage_paths("buffer_update", run, k))
    return policy_update(cfg, k, **L.stage_paths("policy_update", run, k))


@pytest.fixture
def workdir(tmp_path, monkeypatch, run_cfg):
    monkeypatch.chdir(tmp_path)
    make_prompts(run_cfg, "heldout", L.prompts("heldout"))
    make_prompts(run_cfg, "train", L.prompts("train"))
    return tmp_path


def test_one_iteration_writes_valid_artifacts(workdir, run_cfg):
    m = run_iteration(run_cfg, 0)
    run = run_cfg["run"]
    traj = trajectories.read(L.trajectories(run, 0))
    samples = tables.read(L.samples(run, 0), "samples")
    rewards = tables.read(L.rewards(run, 0), "rewards")
    n = run_cfg["train"]["prompts_per_iteration"] * run_cfg["train"]["group_size"]
    assert traj.num_samples == len(samples) == len(rewards) == n
    assert traj.latents.shape[1] == run_cfg["sampling"]["num_steps"] + 1
    assert samples.groupby("group").size().tolist() == [run_cfg["train"]["group_size"]] * 2
    assert torch.equal(traj.logp_old, traj.logp_behavior)  # fresh samples only
    assert traj.train_steps[:, :-1].all() and not traj.train_steps[:, -1].any()  # last step skipped
    assert m["optimizer_steps"] == 2 and m["n_replay"] == 0
    # at most the second of two minibatches can clip (the first runs at the rollout policy)
    assert 0.0 <= m["clipfrac"] <= 0.5


def test_recomputed_logprob_under_unchanged_policy_gives_ratio_exactly_one(workdir, run_cfg):
    from opgrpo_stages.sde import sde_step
    from opgrpo_stages.stages.common import load_backbone

    run = run_cfg["run"]
    init_policy(run_cfg, **L.stage_paths("init_policy", run, 0))
    rollout(run_cfg, 0, **L.stage_paths("rollout", run, 0))
    traj = trajectories.read(L.trajectories(run, 0))
    samples = tables.read(L.samples(run, 0), "samples")
    backbone = load_backbone(run_cfg, L.policy(run, -1))
    cond = backbone.encode_prompts([{"prompt": p} for p in samples["prompt"]])
    sig = [float(s) for s in traj.sigmas]
    sc = run_cfg["sampling"]
    bs = sc["batch_size"]
    for lo in range(0, traj.num_samples, bs):
        idx = slice(lo, lo + bs)
        c = {k: v[idx] for k, v in cond.items()}
        for j in range(traj.num_steps):
            with torch.no_grad():
                v = backbone.velocity(traj.latents[idx, j], sig[j], c)
            st = sde_step(v, traj.latents[idx, j], sig[j], sig[j + 1], noise_level=sc["noise_level"],
                          sigma_max=sig[1], prev_sample=traj.latents[idx, j + 1])
            ratio = torch.exp(st.log_prob - traj.logp_old[idx, j])
            assert torch.equal(ratio, torch.ones_like(ratio)), (j, ratio)


def test_stages_are_bit_identical_when_rerun(workdir, run_cfg):
    run = run_cfg["run"]
    run_iteration(run_cfg, 0)
    outs = [L.trajectories(run, 0), L.samples(run, 0), L.images(run, 0), L.rewards(run, 0), L.policy(run, 0),
            L.optimizer(run, 0), L.metrics(run, 0), *L.buffer(run, 0)]
    before = {p: _sha(p) for p in outs}
    run_iteration(run_cfg, 0)
    assert {p: _sha(p) for p in outs} == before


def test_policy_changes_and_second_iteration_uses_it(workdir, run_cfg):
    run = run_cfg["run"]
    run_iteration(run_cfg, 0)
    run_iteration(run_cfg, 1)
    from opgrpo_stages.formats.policy import read_policy

    p0, _ = read_policy(L.policy(run, -1))
    p1, _ = read_policy(L.policy(run, 0))
    p2, _ = read_policy(L.policy(run, 1))
    assert any(not torch.equal(p0[k], p1[k]) for k in p0)
    assert any(not torch.equal(p1[k], p2[k]) for k in p1)
    s0 = tables.read(L.samples(run, 0), "samples")
    s1 = tables.read(L.samples(run, 1), "samples")
    assert list(s0["sample_id"]) != list(s1["sample_id"])
