"""Issue 13 item 8: Wan2.1's schedule as WanPipeline and Flow-GRPO run it.

Independent recomputation, written from the UniPC flow-sigma definition (diffusers
UniPCMultistepScheduler.set_timesteps with use_flow_sigmas, the Wan2.1 snapshot's config):
s_i = linspace(1, 1/N_train, S+1)[:-1], sigma_i = shift s_i / (1 + (shift - 1) s_i), sigma_0 -= 1e-6,
timestep_i = int(N_train sigma_i) (truncated), sigma_S = 0; and against diffusers' scheduler itself
configured as WanPipeline gets it from the snapshot. Flow-GRPO (train_wan2_1.py) trains steps
range(int(S * timestep_fraction)) of that schedule.
"""

import math

import numpy as np
import pytest
import torch

# the released Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (the keys that matter)
WAN_SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
                 "use_flow_sigmas": True, "flow_shift": 3.0, "num_train_timesteps": 1000,
                 "final_sigmas_type": "zero", "timestep_spacing": "linspace", "solver_order": 2}


def _wan(schedule=None, sched=WAN_SCHEDULER):
    from opgrpo_stages.backbones.wan import WanBackbone

    bb = WanBackbone.__new__(WanBackbone)  # the schedule only: no weights
    bb._setup({"trainable": "lora", "schedule": schedule}, "cpu", None)
    bb._set_scheduler(dict(sched), "scheduler_config")
    return bb


def _formula(S, shift=3.0, n_train=1000):
    s = np.linspace(1, 1 / n_train, S + 1)[:-1]
    sig = shift * s / (1 + (shift - 1) * s)
    sig[0] -= 1e-6
    ts = [int(v * n_train) for v in sig]
    return np.concatenate([sig, [0.0]]).astype(np.float32), ts


@pytest.mark.parametrize("S", [1, 2, 10, 20, 50])
def test_wan_sigmas_and_integer_timesteps_match_unipc_as_wanpipeline(S):
    from diffusers import UniPCMultistepScheduler

    bb = _wan()
    sig = bb.sigmas(S)
    want_sig, want_ts = _formula(S)
    ref = UniPCMultistepScheduler.from_config(WAN_SCHEDULER)  # as WanPipeline.from_pretrained loads it
    ref.set_timesteps(S)
    assert ref.timesteps.tolist() == want_ts  # our reading of the formula is diffusers'
    assert float(sig[0]) == 1.0 and want_sig[0] == pytest.approx(1.0, abs=2e-6)  # UniPC's 1 - 1e-6, see sigmas()
    assert torch.equal(sig[1:], torch.from_numpy(want_sig[1:]))
    assert [bb.model_timestep(float(v)) for v in sig[:-1]] == [float(t) for t in want_ts]
    assert all(float(t).is_integer() for t in want_ts)


def test_wan_schedule_differs_from_flow_match_and_option_restores_it():
    from diffusers import FlowMatchEulerDiscreteScheduler

    new, old = _wan().sigmas(20), _wan("flow_match").sigmas(20)
    fm = FlowMatchEulerDiscreteScheduler(shift=3.0)
    fm.set_timesteps(20)
    assert torch.equal(old, fm.sigmas.float())
    gap = float((new - old).abs().max())
    assert gap > 0.1  # the "max gap 0.13 at 20 steps"
    bb = _wan("flow_match")
    assert bb.model_timestep(float(old[3])) == pytest.approx(float(old[3]) * 1000)


def test_timestep_in_a_fresh_process_comes_from_the_scheduler_not_sigma_x_1000():
    """policy_update reads sigmas from the trajectories file: a backbone that never called sigmas()
    still feeds the transformer UniPC's integer timestep."""
    sig = _wan().sigmas(20)
    fresh = _wan()
    got = [fresh.model_timestep(float(v)) for v in sig[:-1]]
    assert got == [float(t) for t in _formula(20)[1]]
    assert any(g != math.floor(float(v) * 1000) for g, v in zip(got, sig[:-1]))  # sigma*1000 is not it
    assert fresh.model_timestep(0.123456) == pytest.approx(123.456)  # on no schedule: a probe


def test_velocity_feeds_the_integer_timestep():
    bb = _wan()
    sig = bb.sigmas(20)
    seen = []
    bb.guidance_scale, bb.embed_fields = 1.0, ("prompt_embeds",)
    bb._forward = lambda x, t, fields: (seen.append(t.clone()), torch.zeros_like(x))[1]
    bb.velocity(torch.zeros(2, 4, 1, 2, 2), float(sig[1]), {"prompt_embeds": torch.zeros(2, 3, 8)})
    assert seen[0].tolist() == [float(_formula(20)[1][1])] * 2


def test_timestep_fraction_leaves_out_the_last_step_as_flow_grpo_wan():
    """train_wan2_1.py: train_timesteps = range(int(S * timestep_fraction)); Wan preset S=20, 0.99:
    steps 0..18 trained, the last (sigma_19 -> 0) left out."""
    from opgrpo_stages.sde import num_train_steps

    for S in (10, 20, 50):
        assert num_train_steps(S, 0.99) == int(S * 0.99) == S - 1
    sig = _wan().sigmas(20)
    left_out = sig[num_train_steps(20, 0.99):]
    assert left_out[-1] == 0 and len(left_out) == 2  # the step from sigma_19 to 0
