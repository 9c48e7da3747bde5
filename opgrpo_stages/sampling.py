"""Sampling loops shared by rollout and evaluation.

``sample_sde`` runs the Flow-GRPO SDE from given initial noise with given per-step noise and
records every latent and the per-step log-probs under the current policy. Leading steps of some
samples can be *kept* from stored trajectories (OP-GRPO's truncated replay): those transitions
are scored, not drawn. ``sample_ode`` is plain Euler (evaluation).

Both loops are device-resident: a batch's initial latent, step noise, kept latents and
conditioning go to the backbone's device once (``backbone.prepare_cond`` builds CFG's
``[negative; conditional]`` there, once per batch), every step's velocity and SDE maths stay
there, and the batch's latents and log-probs come back to the host in one copy. Which steps keep
or regenerate is decided from the host copies of ``kept_steps``/``ode_from``, so the loop never
waits on the device. The float32 maths are the same ops in the same order as the host loop
before (c7945f6): on the CPU the outputs are bit-identical to it (tests/test_device_loop.py).
"""

from __future__ import annotations

import torch

from .backbones.base import slice_cond
from .sde import ode_step, sde_step


def per_sample_noise(backbone, seeds: list[int], num_steps: int):
    """Initial latent and step noise of each sample from its own generator: results do not
    depend on batch size or on how samples are sharded across processes."""
    init, steps = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        init.append(backbone.initial_noise(g))
        steps.append(torch.randn((num_steps, *backbone.latent_shape), generator=g, dtype=torch.float32))
    return torch.stack(init), torch.stack(steps)


def _bcast(mask, like):
    """(B,) mask -> (B, 1, ..., 1) to select whole samples of ``like``."""
    return mask.view(-1, *[1] * (like.ndim - 1))


@torch.no_grad()
def sample_sde(backbone, cond, init, step_noise, sigmas, *, noise_level, kind, reduction, batch_size,
               kept_latents=None, kept_steps=None, ode_from=None, progress=None, cps_logp="flow_grpo"):
    """Returns (latents (N, S+1, *latent), logp (N, S)) on the host, under the current policy.

    ``kept_latents`` (N, S+1, *latent) and ``kept_steps`` (N,) int: for sample n the first
    ``kept_steps[n]`` transitions are taken from ``kept_latents[n]`` (and scored).
    ``ode_from`` (N,) int: from step ``ode_from[n]`` on, sample n takes deterministic Euler steps
    (paper Eq. 2) instead of SDE steps; those steps have no density and get log-prob 0."""
    n, s = init.shape[0], sigmas.shape[0] - 1
    dev = backbone.device
    latents = torch.empty((n, s + 1, *init.shape[1:]), dtype=torch.float32)
    logp = torch.empty((n, s), dtype=torch.float32)
    sig = [float(v) for v in sigmas]
    step = dict(noise_level=noise_level, sigma_max=sig[1], kind=kind, reduction=reduction, cps_logp=cps_logp)
    chunks = range(0, n, batch_size)
    for lo in (progress(chunks, "rollout") if progress else chunks):
        idx = slice(lo, min(lo + batch_size, n))
        b = idx.stop - idx.start
        c = backbone.prepare_cond(slice_cond(cond, idx))
        x = init[idx].to(dev, torch.float32)
        noise = step_noise[idx].to(dev)
        keep_h = kept_steps[idx] if kept_steps is not None else None  # host copies decide the branches
        ode_h = ode_from[idx] if ode_from is not None else None
        keeps = keep_h is not None and bool((keep_h > 0).any())
        if keeps:
            keep, kept = keep_h.to(dev), kept_latents[idx].to(dev)
            x = torch.where(_bcast(keep > 0, x), kept[:, 0], x)
        ode = ode_h.to(dev) if ode_h is not None else None
        lat = torch.empty((b, s + 1, *init.shape[1:]), dtype=torch.float32, device=dev)
        lp_all = torch.empty((b, s), dtype=torch.float32, device=dev)
        lat[:, 0] = x
        for i in range(s):
            v = backbone.velocity(x, sig[i], c)
            drawn = sde_step(v, x, sig[i], sig[i + 1], noise=noise[:, i], **step)
            x_next = drawn.prev_sample
            if keeps and bool((keep_h > i).any()):
                x_next = torch.where(_bcast(keep > i, x), kept[:, i + 1], x_next)
                lp = sde_step(v, x, sig[i], sig[i + 1], prev_sample=x_next, **step).log_prob
            else:
                lp = drawn.log_prob
            if ode_h is not None and bool((ode_h <= i).any()):
                use_ode = ode <= i
                x_next = torch.where(_bcast(use_ode, x), ode_step(v, x, sig[i], sig[i + 1]), x_next)
                lp = torch.where(use_ode, torch.zeros_like(lp), lp)
            lat[:, i + 1] = x_next
            lp_all[:, i] = lp
            x = x_next
        latents[idx] = lat.cpu()  # the batch's one trip back to the host
        logp[idx] = lp_all.cpu()
    return latents, logp


@torch.no_grad()
def sample_ode(backbone, cond, init, sigmas, *, batch_size, progress=None):
    """Euler sampling; the final latents (N, *latent) on the host."""
    n = init.shape[0]
    dev = backbone.device
    sig = [float(v) for v in sigmas]
    out = torch.empty_like(init, dtype=torch.float32)
    chunks = range(0, n, batch_size)
    for lo in (progress(chunks, "sample") if progress else chunks):
        idx = slice(lo, min(lo + batch_size, n))
        c = backbone.prepare_cond(slice_cond(cond, idx))
        x = init[idx].to(dev, torch.float32)
        for i in range(len(sig) - 1):
            x = ode_step(backbone.velocity(x, sig[i], c), x, sig[i], sig[i + 1])
        out[idx] = x.cpu()
    return out
