"""Common random numbers (issue 21 §1): Flow-GRPO and OP-GRPO with one seed see the same dataset
prompts with the same noise, so their comparison is paired."""

import pytest
import torch

from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.formats import images as images_fmt
from opgrpo_stages.formats import tables, trajectories
from opgrpo_stages.stages.buffer_update import buffer_update
from opgrpo_stages.stages.init_policy import init_policy
from opgrpo_stages.stages.policy_update import policy_update
from opgrpo_stages.stages.prompts import make_prompts
from opgrpo_stages.stages.rollout import rollout
from opgrpo_stages.stages.score import score

from conftest import tiny_config

RUNS = {"flowgrpo": {}, "opgrpo": {"replay": {"fraction": 0.5, "truncation": 2, "capacity": 8}}}


def _cfgs(**over):
    cfg = tiny_config(train={"prompts_per_iteration": 4}, runs=RUNS, **over)
    return {r: C.resolve_run(cfg, r) for r in RUNS}


def _iteration(cfg, k, stages=(rollout, score, buffer_update, policy_update)):
    if k == 0:
        init_policy(cfg, **L.stage_paths("init_policy", cfg["run"], 0))
    for stage in stages:
        stage(cfg, k, **L.stage_paths(stage.__name__, cfg["run"], k))


def _fresh(run, k):
    """{(prompt_id, slot in group): (latents, image)} of the run's fresh samples at iteration k."""
    samples = tables.read(L.samples(run, k), "samples")
    traj = trajectories.read(L.trajectories(run, k))
    imgs = images_fmt.read(L.images(run, k))
    out = {}
    for g, grp in samples.groupby("group", sort=False):
        for slot, (n, row) in enumerate(grp.iterrows()):
            if row["source"] == "fresh":
                out[(row["prompt_id"], slot)] = (traj.latents[n], imgs[n])
    return out


@pytest.fixture
def two_arms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfgs = _cfgs()
    make_prompts(cfgs["flowgrpo"], "train", L.prompts("train"))
    return cfgs


def test_flowgrpo_and_opgrpo_of_one_seed_sample_identical_fresh_groups_at_iteration_0(two_arms):
    for cfg in two_arms.values():
        _iteration(cfg, 0, stages=(rollout,))
    fg, op = _fresh("flowgrpo", 0), _fresh("opgrpo", 0)
    assert len(fg) == len(op) == 4 * 4  # every group fresh: the buffer is empty at iteration 0
    assert set(fg) == set(op)  # the same prompts, slot by slot
    for key, (lat, img) in fg.items():
        assert torch.equal(lat[0], op[key][0][0]), key  # the same initial noise
        assert torch.equal(lat, op[key][0]), key  # the same trajectory (same base policy, same step noise)
        assert (img == op[key][1]).all(), key


def test_opgrpo_fresh_groups_are_the_first_prompts_flowgrpo_draws_with_its_noise(two_arms):
    for cfg in two_arms.values():
        _iteration(cfg, 0)
        _iteration(cfg, 1, stages=(rollout,))
    fg_samples = tables.read(L.samples("flowgrpo", 1), "samples")
    op_samples = tables.read(L.samples("opgrpo", 1), "samples")
    n_replay = op_samples.loc[op_samples["source"] == "replay", "group"].nunique()
    assert n_replay == 2  # 50% of 4 prompts from the buffer
    op_fresh_prompts = set(op_samples.loc[~op_samples["group"].isin(
        op_samples.loc[op_samples["source"] == "replay", "group"]), "prompt_id"])
    assert len(op_fresh_prompts) == 2 and op_fresh_prompts < set(fg_samples["prompt_id"])
    # the policies differ after one update, the initial noise of a shared prompt's slot does not
    fg, op = _fresh("flowgrpo", 1), _fresh("opgrpo", 1)
    shared = [key for key in op if key[0] in op_fresh_prompts]
    assert len(shared) == 2 * 4
    for key in shared:
        assert torch.equal(fg[key][0][0], op[key][0][0]), key


def test_per_run_streams_keep_the_old_draws_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfgs = _cfgs(seed_streams="per_run")
    make_prompts(cfgs["flowgrpo"], "train", L.prompts("train"))
    for cfg in cfgs.values():
        _iteration(cfg, 0, stages=(rollout,))
    fg, op = _fresh("flowgrpo", 0), _fresh("opgrpo", 0)
    assert not any(k in op and torch.equal(v[0][0], op[k][0][0]) for k, v in fg.items())
