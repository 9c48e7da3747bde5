"""The device-resident sampling loops (sampling.sample_sde / sample_ode) against the host loop they
replace (c7945f6), written out here: on the CPU the outputs must be bit-identical, for the tiny
UNet and the tiny SD3 / Wan2.1 (CFG, float32 and bf16), with kept (replayed) prefixes and
ODE-regenerated suffixes; and CFG's [negative; conditional] is built once per batch."""

import pytest
import torch

from conftest import tiny_config
from tiny_models import sd3_model_cfg, tiny_sd3_path, tiny_wan_path, wan_model_cfg  # noqa: F401 (fixtures)
from opgrpo_stages.sampling import per_sample_noise, sample_ode, sample_sde
from opgrpo_stages.sde import ode_step, sde_step

N, STEPS, BATCH = 3, 3, 2  # batches of 2 and 1: a ragged last batch


def host_velocity(bb, x, sigma, cond):
    """c7945f6's velocity: the CFG pair stacked on the host and copied at every call."""
    if not hasattr(bb, "_forward"):
        return bb.velocity(x, sigma, cond)  # the tiny UNet: no CFG, unchanged
    n, guided = x.shape[0], bb.guidance_scale != 1.0
    x = x.to(bb.device, bb.dtype)
    fields = {k: cond[k] for k in bb.embed_fields}
    if guided:
        x = torch.cat([x, x])
        fields = {k: torch.cat([cond["neg_" + k], v]) for k, v in fields.items()}
    fields = {k: v.to(bb.device, bb.dtype) for k, v in fields.items()}
    t = torch.full((x.shape[0],), bb.model_timestep(sigma), device=bb.device)
    with bb._autocast():
        out = bb._forward(x, t, fields).float()
    return out[:n] + bb.guidance_scale * (out[n:] - out[:n]) if guided else out


@torch.no_grad()
def host_sample_sde(bb, cond, init, noise, sigmas, kept_latents, kept_steps, ode_from, **kw):
    """c7945f6's sample_sde: per step, velocity and SDE maths on the host."""
    n, s = init.shape[0], len(sigmas) - 1
    sig = [float(v) for v in sigmas]
    latents, logp = torch.empty((n, s + 1, *init.shape[1:])), torch.empty((n, s))
    for lo in range(0, n, BATCH):
        idx = slice(lo, min(lo + BATCH, n))
        c = {k: v[idx] for k, v in cond.items()}
        keep, ode = kept_steps[idx], ode_from[idx]
        shape = (-1, *[1] * (init.ndim - 1))  # a per-sample mask over latents
        x = torch.where((keep > 0).view(shape), kept_latents[idx, 0], init[idx].float())
        latents[idx, 0] = x
        for i in range(s):
            v = host_velocity(bb, x, sig[i], c)
            drawn = sde_step(v, x, sig[i], sig[i + 1], sigma_max=sig[1], noise=noise[idx, i], **kw)
            x_next, lp = drawn.prev_sample, drawn.log_prob
            if (keep > i).any():
                x_next = torch.where((keep > i).view(shape), kept_latents[idx, i + 1], x_next)
                lp = sde_step(v, x, sig[i], sig[i + 1], sigma_max=sig[1], prev_sample=x_next, **kw).log_prob
            if (ode <= i).any():
                x_next = torch.where((ode <= i).view(shape), ode_step(v, x, sig[i], sig[i + 1]), x_next)
                lp = torch.where(ode <= i, torch.zeros_like(lp), lp)
            latents[idx, i + 1], logp[idx, i] = x_next, lp
            x = x_next
    return latents, logp


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, tiny_sd3_path, tiny_wan_path):
    """(kind, dtype) -> (backbone, conditioning of N samples); prompts embedded once per kind."""
    from opgrpo_stages import config as C
    from opgrpo_stages.formats import prompts as prompts_fmt
    from opgrpo_stages.stages.common import load_backbone
    from opgrpo_stages.stages.embed_prompts import embed_prompts
    from opgrpo_stages.stages.prompts import make_prompts

    cache, embedded = {}, {}

    def get(kind, dtype):
        if (kind, dtype) not in cache:
            over = {"prompts": {"train": {"n": 4}}}
            if kind != "tiny_unet":
                over["model"] = (sd3_model_cfg(tiny_sd3_path, dtype=dtype) if kind == "sd3"
                                 else wan_model_cfg(tiny_wan_path, dtype=dtype))
            cfg = C.resolve_run(tiny_config(**over), "flowgrpo")
            d = tmp_path_factory.mktemp(f"loop_{kind}")
            make_prompts(cfg, "train", d / "train.jsonl")
            emb = None
            if kind != "tiny_unet":
                if kind not in embedded:
                    embedded[kind] = d / "train.embeddings.safetensors"
                    embed_prompts(cfg, prompts_path=d / "train.jsonl", out_embeddings=embedded[kind])
                emb = embedded[kind]
            prompts = prompts_fmt.read(d / "train.jsonl")
            bb = load_backbone(cfg, None, emb)
            rows = [prompts[i % len(prompts)] for i in range(N)]
            cache[kind, dtype] = bb, bb.encode_prompts([{"id": p["id"], "prompt": p["prompt"]} for p in rows])
        return cache[kind, dtype]

    return get


@pytest.mark.parametrize("kind,dtype", [("tiny_unet", "float32"), ("sd3", "float32"), ("sd3", "bfloat16"),
                                        ("wan", "float32")])
def test_device_loops_are_bit_identical_to_the_host_loop(kind, dtype, backbones):
    bb, cond = backbones(kind, dtype)
    sigmas = bb.sigmas(STEPS)
    init, noise = per_sample_noise(bb, list(range(100, 100 + N)), STEPS)
    g = torch.Generator().manual_seed(7)
    kept_latents = torch.randn((N, STEPS + 1, *bb.latent_shape), generator=g)
    # sample 1 keeps 2 steps then regenerates by the ODE, sample 2 keeps 1 then the SDE; sample 0 fresh
    kept_steps = torch.tensor([0, 2, 1])
    ode_from = torch.tensor([STEPS, 2, STEPS])
    sdes = [{"noise_level": 0.7, "kind": "flow_grpo", "reduction": "mean"}]
    if kind == "sd3" and dtype == "float32":  # the SDE maths do not depend on the backbone: one is enough
        sdes.append({"noise_level": 0.5, "kind": "cps", "reduction": "sum", "cps_logp": "gaussian"})
    for kw in sdes:
        ref = host_sample_sde(bb, cond, init, noise, sigmas, kept_latents, kept_steps, ode_from, **kw)
        new = sample_sde(bb, cond, init, noise, sigmas, batch_size=BATCH, kept_latents=kept_latents,
                         kept_steps=kept_steps, ode_from=ode_from, **kw)
        assert torch.equal(new[0], ref[0]) and torch.equal(new[1], ref[1]), kw
        assert new[0].device.type == "cpu" and new[1].device.type == "cpu"
    sig = [float(v) for v in sigmas]
    x = init.clone()
    with torch.no_grad():
        for i in range(STEPS):
            x = torch.cat([ode_step(host_velocity(bb, x[lo:lo + BATCH], sig[i], {k: v[lo:lo + BATCH] for k, v in
                                                                                 cond.items()}),
                                    x[lo:lo + BATCH], sig[i], sig[i + 1]) for lo in range(0, N, BATCH)])
    assert torch.equal(sample_ode(bb, cond, init, sigmas, batch_size=BATCH), x)


def test_cfg_pairs_are_built_once_per_batch(backbones, monkeypatch):
    bb, cond = backbones("sd3", "float32")
    seen = []
    forward = bb._forward

    def spy(x, t, fields):
        seen.append(fields["prompt_embeds"].data_ptr())
        assert fields["prompt_embeds"].shape[0] == x.shape[0]  # [negative; conditional]
        return forward(x, t, fields)

    monkeypatch.setattr(bb, "_forward", spy)
    sigmas = bb.sigmas(STEPS)
    init, noise = per_sample_noise(bb, list(range(N)), STEPS)
    sample_sde(bb, cond, init, noise, sigmas, noise_level=0.7, kind="flow_grpo", reduction="mean",
               batch_size=BATCH)
    batches = -(-N // BATCH)
    assert len(seen) == batches * STEPS
    # every step of a batch reads the same stacked tensor: it was built once, before the steps
    assert [len(set(seen[b * STEPS:(b + 1) * STEPS])) for b in range(batches)] == [1] * batches


def test_update_microbatch_is_bit_identical_to_the_host_loop(backbones):
    """policy_update's device-resident microbatch (_train_chunk) against c7945f6's per-step host
    loop, written out here: same gradients, losses, KL sums and clip / log-ratio tables, with the KL
    term and a replayed sample whose ODE-regenerated step is not trained (a partial row set)."""
    from opgrpo_stages.formats.trajectories import Trajectories

    bb, cond = backbones("sd3", "float32")
    g = torch.Generator().manual_seed(11)
    sig = bb.sigmas(STEPS)
    lat = torch.randn((N, STEPS + 1, *bb.latent_shape), generator=g)
    logp_old = -torch.rand((N, STEPS), generator=g)
    train = torch.ones((N, STEPS), dtype=torch.bool)
    train[:, -1] = False
    train[1, 1] = False  # sample 1: regenerated by the ODE from step 1
    traj = Trajectories(lat, sig, logp_old, logp_old.clone(), train, {})
    adv, w = torch.randn(N, generator=g), 1 + 0.1 * torch.rand(N, generator=g)
    tc = {"clip_range": 0.2, "kl_beta": 0.04, "kl_form": "flow_grpo"}
    sc = {"noise_level": 0.7, "sde": "flow_grpo", "logp_reduction": "mean", "cps_logp": "flow_grpo"}
    params = bb.trainable_parameters()
    saved = bb.policy_state_dict()
    with torch.no_grad():  # a policy away from the reference, so the KL term has gradients
        for p in params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    try:
        _compare_update(bb, cond, traj, params, adv, w, tc, sc)
    finally:
        bb.load_policy_state_dict(saved)


def _compare_update(bb, cond, traj, params, adv, w, tc, sc):
    from opgrpo_stages.grpo import clipped_surrogate, kl_std, kl_to_reference
    from opgrpo_stages.sde import transition_mean
    from opgrpo_stages.stages.policy_update import _train_chunk

    lat, logp_old, train = traj.latents, traj.logp_old, traj.train_steps
    chunk, steps, denom = torch.tensor([2, 0, 1]), [0, 1], N * 2

    def grads():
        out = {k: p.grad.clone() for k, p in params.items()}
        for p in params.values():
            p.grad = None
        return out

    losses, kls = [], []
    clipped, sq = torch.zeros(N, STEPS), torch.zeros(N, STEPS)
    s = [float(v) for v in traj.sigmas]
    for j in steps:  # c7945f6's loop
        rows = chunk[train[chunk, j]]
        c = {k: v[rows] for k, v in cond.items()}
        x, x_next = lat[rows, j], lat[rows, j + 1]
        st = sde_step(host_velocity(bb, x, s[j], c), x, s[j], s[j + 1], noise_level=0.7, sigma_max=s[1],
                      prev_sample=x_next)
        per_sample, _, clip_mask = clipped_surrogate(st.log_prob, logp_old[rows, j], adv[rows], 0.2)
        loss = (w[rows] * per_sample).sum() / denom
        with torch.no_grad(), bb.reference():
            v_ref = host_velocity(bb, x, s[j], c)
        kl = kl_to_reference(st.mean, transition_mean(x, v_ref, s[j], s[j + 1], 0.7, s[1]), kl_std(st))
        loss = loss + 0.04 * kl.sum() / denom
        loss.backward()
        losses.append(loss.item())
        kls.append(float(kl.sum().detach()))
        clipped[rows, j] = clip_mask.float()
        sq[rows, j] = (st.log_prob.detach() - logp_old[rows, j]) ** 2
    ref_grads = grads()

    per_step, new_clipped, new_sq = _train_chunk(
        bb, cond, traj, chunk, steps, ref_logp=logp_old, ref_is_old=torch.ones_like(train), adv=adv, w=w,
        denom=denom, first_step=False, tc=tc, sc=sc)
    new_grads = grads()
    assert [j for j, _, _ in per_step] == steps
    assert [lo for _, lo, _ in per_step] == losses and [k for _, _, k in per_step] == kls
    assert torch.equal(new_clipped, clipped[chunk]) and torch.equal(new_sq, sq[chunk])
    assert all(torch.equal(new_grads[k], ref_grads[k]) for k in params)
    assert any(bool(v.abs().sum() > 0) for v in new_grads.values())


def test_update_microbatch_sends_its_step_rows_in_one_non_blocking_copy(backbones):
    """The trained rows of each step (index tensors) go to the device once per microbatch, without
    blocking, not once per trained step (issue 22: a blocking host-to-device copy at every step);
    counted as the integer tensors' ``.to`` calls inside _train_chunk."""
    from torch.overrides import TorchFunctionMode

    from opgrpo_stages.formats.trajectories import Trajectories
    from opgrpo_stages.stages.policy_update import _train_chunk

    class IndexCopies(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.to and args[0].dtype == torch.long:
                self.calls.append(bool(kwargs.get("non_blocking", False)))
            return func(*args, **kwargs)

    bb, cond = backbones("sd3", "float32")
    g = torch.Generator().manual_seed(3)
    lat = torch.randn((N, STEPS + 1, *bb.latent_shape), generator=g)
    logp_old = -torch.rand((N, STEPS), generator=g)
    train = torch.ones((N, STEPS), dtype=torch.bool)
    train[1, 2] = False  # a partial row set at the last step
    traj = Trajectories(lat, bb.sigmas(STEPS), logp_old, logp_old.clone(), train, {})
    tc = {"clip_range": 0.2, "kl_beta": 0.0, "kl_form": "flow_grpo"}
    sc = {"noise_level": 0.7, "sde": "flow_grpo", "logp_reduction": "mean", "cps_logp": "flow_grpo"}
    mode = IndexCopies()
    with mode:
        per_step, _, _ = _train_chunk(bb, cond, traj, torch.tensor([0, 1, 2]), list(range(STEPS)), ref_logp=logp_old,
                                      ref_is_old=torch.ones_like(train), adv=torch.randn(N, generator=g),
                                      w=torch.ones(N), denom=N * STEPS, first_step=False, tc=tc, sc=sc)
    for p in bb.trainable_parameters().values():
        p.grad = None
    assert [j for j, _, _ in per_step] == list(range(STEPS))
    assert mode.calls == [True]
