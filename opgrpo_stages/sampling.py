"""Sampling loops shared by rollout and evaluation.

``sample_sde`` runs the Flow-GRPO SDE from given initial noise with given per-step noise and
records every latent and the per-step log-probs under the current policy. Leading steps of some
samples can be *kept* from stored trajectories (OP-GRPO's truncated replay): those transitions
are scored, not drawn. ``sample_ode`` is plain Euler (evaluation).
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


@torch.no_grad()
def sample_sde(backbone, cond, init, step_noise, sigmas, *, noise_level, kind, reduction, batch_size,
               kept_latents=None, kept_steps=None, ode_from=None, progress=None, cps_logp="flow_grpo"):
    """Returns (latents (N, S+1, *latent), logp (N, S)) under the current policy.

    ``kept_latents`` (N, S+1, *latent) and ``kept_steps`` (N,) int: for sample n the first
    ``kept_steps[n]`` transitions are taken from ``kept_latents[n]`` (and scored).
    ``ode_from`` (N,) int: from step ``ode_from[n]`` on, sample n takes deterministic Euler steps
    (paper Eq. 2) instead of SDE steps; those steps have no density and get log-prob 0."""
    n, s = init.shape[0], sigmas.shape[0] - 1
    latents = torch.empty((n, s + 1, *init.shape[1:]), dtype=torch.float32)
    logp = torch.empty((n, s), dtype=torch.float32)
    sig = [float(v) for v in sigmas]
    chunks = range(0, n, batch_size)
    for lo in (progress(chunks, "rollout") if progress else chunks):
        idx = slice(lo, min(lo + batch_size, n))
        c = slice_cond(cond, idx)
        x = init[idx].float()
        keep = kept_steps[idx] if kept_steps is not None else None
        if keep is not None and (keep > 0).any():
            x = torch.where((keep > 0).view(-1, *[1] * (x.ndim - 1)), kept_latents[idx, 0], x)
        latents[idx, 0] = x
        for i in range(s):
            v = backbone.velocity(x, sig[i], c)
            drawn = sde_step(v, x, sig[i], sig[i + 1], noise_level=noise_level, sigma_max=sig[1],
                             noise=step_noise[idx, i], kind=kind, reduction=reduction, cps_logp=cps_logp)
            x_next = drawn.prev_sample
            if keep is not None and (keep > i).any():
                use_kept = (keep > i).view(-1, *[1] * (x.ndim - 1))
                x_next = torch.where(use_kept, kept_latents[idx, i + 1], x_next)
                lp = sde_step(v, x, sig[i], sig[i + 1], noise_level=noise_level, sigma_max=sig[1],
                              prev_sample=x_next, kind=kind, reduction=reduction, cps_logp=cps_logp).log_prob
            else:
                lp = drawn.log_prob
            if ode_from is not None and (ode_from[idx] <= i).any():
                use_ode = ode_from[idx] <= i
                x_next = torch.where(use_ode.view(-1, *[1] * (x.ndim - 1)), ode_step(v, x, sig[i], sig[i + 1]), x_next)
                lp = torch.where(use_ode, torch.zeros_like(lp), lp)
            latents[idx, i + 1] = x_next
            logp[idx, i] = lp
            x = x_next
    return latents, logp


@torch.no_grad()
def sample_ode(backbone, cond, init, sigmas, *, batch_size, progress=None):
    n = init.shape[0]
    sig = [float(v) for v in sigmas]
    out = torch.empty_like(init, dtype=torch.float32)
    chunks = range(0, n, batch_size)
    for lo in (progress(chunks, "sample") if progress else chunks):
        idx = slice(lo, min(lo + batch_size, n))
        c = slice_cond(cond, idx)
        x = init[idx].float()
        for i in range(len(sig) - 1):
            x = ode_step(backbone.velocity(x, sig[i], c), x, sig[i], sig[i + 1])
        out[idx] = x
    return out
