"""OP-GRPO hybrid rollout with truncation, and the sequence-level correction on real files."""

import pytest
import torch

from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.formats import buffer as buffer_fmt
from opgrpo_stages.formats import tables, trajectories
from opgrpo_stages.grpo import sequence_weights
from opgrpo_stages.stages.buffer_update import buffer_update
from opgrpo_stages.stages.init_policy import init_policy
from opgrpo_stages.stages.policy_update import _weights_and_refs, policy_update
from opgrpo_stages.stages.prompts import make_prompts
from opgrpo_stages.stages.rollout import rollout
from opgrpo_stages.stages.score import score

from conftest import tiny_config

T_OFF = 2


@pytest.fixture
def op_cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.resolve_run(tiny_config(replay={"fraction": 1.0, "truncation": T_OFF, "capacity": 8}), "flowgrpo")
    make_prompts(cfg, "heldout", L.prompts("heldout"))
    make_prompts(cfg, "train", L.prompts("train"))
    init_policy(cfg, **L.stage_paths("init_policy", "flowgrpo", 0))
    for stage in (rollout, score, buffer_update, policy_update):
        stage(cfg, 0, **L.stage_paths(stage.__name__, "flowgrpo", 0))
    return cfg


def test_replayed_group_has_g_minus_one_fresh_and_the_truncated_stored_trajectory(op_cfg):
    run, g = "flowgrpo", op_cfg["train"]["group_size"]
    rollout(op_cfg, 1, **L.stage_paths("rollout", run, 1))
    buf = buffer_fmt.read(*L.buffer(run, 0))
    samples = tables.read(L.samples(run, 1), "samples")
    traj = trajectories.read(L.trajectories(run, 1))
    replay_groups = samples[samples["source"] == "replay"]["group"].unique()
    assert len(replay_groups) == op_cfg["train"]["prompts_per_iteration"]  # fraction 1.0: every group
    for grp in replay_groups:
        rows = samples[samples["group"] == grp]
        assert sorted(rows["source"]) == ["fresh"] * (g - 1) + ["replay"]
        i = int(rows.index[rows["source"] == "replay"][0])
        entry = buf.table[buf.table["prompt_id"] == rows["prompt_id"].iloc[0]].iloc[0]
        stored = buf.latents[int(entry["row"])]
        assert torch.equal(traj.latents[i, : T_OFF + 1], stored[: T_OFF + 1])  # kept down to t_off
        assert not torch.equal(traj.latents[i, T_OFF + 1], stored[T_OFF + 1])  # regenerated after
        assert torch.equal(traj.logp_behavior[i, :T_OFF], buf.logp_behavior[int(entry["row"]), :T_OFF])
        assert torch.equal(traj.logp_behavior[i, T_OFF:], traj.logp_old[i, T_OFF:])
        assert int(samples.loc[i, "kept_steps"]) == T_OFF and int(samples.loc[i, "birth_iteration"]) == 0


def test_sequence_weight_is_one_if_the_policy_did_not_change(op_cfg, tmp_path):
    from opgrpo_stages.formats import policy as policy_fmt

    run = "flowgrpo"
    state, meta = policy_fmt.read_policy(L.policy(run, -1))  # the policy iteration 0 sampled with, as if
    policy_fmt.write_policy(tmp_path / "same.safetensors", state, {**meta, "iteration": 0})  # 0 left it unchanged
    paths = {**L.stage_paths("rollout", run, 1), "policy_path": tmp_path / "same.safetensors"}
    rollout(op_cfg, 1, **paths)
    traj = trajectories.read(L.trajectories(run, 1))
    samples = tables.read(L.samples(run, 1), "samples")
    w, _ref, _kept, _, _ = _weights_and_refs(op_cfg, traj, samples)
    assert torch.equal(w, torch.ones_like(w))


def test_sequence_weight_matches_independent_computation_after_an_update(op_cfg):
    run = "flowgrpo"
    rollout(op_cfg, 1, **L.stage_paths("rollout", run, 1))
    traj = trajectories.read(L.trajectories(run, 1))
    samples = tables.read(L.samples(run, 1), "samples")
    w, ref, kept, _, _ = _weights_and_refs(op_cfg, traj, samples)
    for i in range(len(samples)):
        if samples.loc[i, "source"] == "fresh":
            assert float(w[i]) == 1.0
        else:
            d = (traj.logp_old[i, :T_OFF].double() - traj.logp_behavior[i, :T_OFF].double()).sum()
            assert float(w[i]) == pytest.approx(float(torch.exp(d)), rel=1e-5)
            assert float(w[i]) != 1.0  # the policy moved, the weight reflects it
    per_step = C.deep_merge(op_cfg, {"replay": {"correction": "per_step"}})
    w2, ref2, _, _, _ = _weights_and_refs(per_step, traj, samples)
    assert torch.equal(w2, torch.ones_like(w2))
    assert torch.equal(ref2[kept], traj.logp_behavior[kept]) and torch.equal(ref2[~kept], traj.logp_old[~kept])
