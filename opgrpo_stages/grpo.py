"""GRPO objective pieces (Flow-GRPO) and OP-GRPO's off-policy correction.

Kept free of I/O so the math can be tested against independent recomputation.
"""

from __future__ import annotations

import numpy as np
import torch

CORRECTIONS = ("sequence", "none", "per_step")
KL_FORMS = ("flow_grpo", "gaussian")


def group_advantages(rewards, groups, *, std_mode: str = "global", eps: float = 1e-4, clip: float = 5.0) -> np.ndarray:
    """A = (R - mean of the prompt's group) / (std + eps), clipped to [-clip, clip].

    ``std_mode='global'`` (Flow-GRPO's default) takes the std over every reward of the
    iteration; ``'prompt'`` over the group only. Population std (ddof 0), as numpy's default.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = np.asarray(groups)
    adv = np.empty_like(rewards)
    global_std = rewards.std()
    for g in np.unique(groups):
        m = groups == g
        std = global_std if std_mode == "global" else rewards[m].std()
        adv[m] = (rewards[m] - rewards[m].mean()) / (std + eps)
    if std_mode not in ("global", "prompt"):
        raise ValueError(f"unknown advantage std mode {std_mode!r}; expected 'global' or 'prompt'")
    return np.clip(adv, -clip, clip)


def sequence_weights(logp_old, logp_behavior, kept_mask) -> torch.Tensor:
    """OP-GRPO's sequence-level importance weight w = prod_t p_old / p_behavior over the kept
    off-policy steps, as exp(sum(logp_old - logp_behavior)) in float32. Exactly 1 for fresh
    samples (whose behaviour policy is the old policy)."""
    diff = (logp_old.float() - logp_behavior.float()) * kept_mask.float()
    return torch.exp(diff.sum(dim=1))


def effective_sample_size(weights: torch.Tensor) -> float:
    w = weights.double()
    return float(w.sum() ** 2 / (w.pow(2).sum() + 1e-300))


def clipped_surrogate(logp, logp_ref, advantages, clip_range: float):
    """Per-sample PPO loss max(-A r, -A clip(r, 1-eps, 1+eps)) with r = exp(logp - logp_ref).
    Returns (loss per sample, ratio, clipped mask)."""
    ratio = torch.exp(logp - logp_ref)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio, (ratio - 1.0).abs() > clip_range


def kl_to_reference(mean, mean_ref, std) -> torch.Tensor:
    """Per sample: mean over latent dims of (mean - mean_ref)^2 / (2 std^2). With ``std`` the
    transition std this is the Gaussian KL per dimension; Flow-GRPO passes its ``std_dev_t``
    instead (see ``kl_std``)."""
    dims = tuple(range(1, mean.ndim))
    return ((mean.float() - mean_ref.float()) ** 2).mean(dim=dims) / (2 * std.float() ** 2)


def kl_std(step, form: str = "flow_grpo"):
    """The std the KL term divides by. ``flow_grpo`` (default): the step's ``std_dev_t``, i.e.
    a sqrt(sigma / (1 - sigma)) without the transition's sqrt(-dt) for the flow_grpo SDE, as
    scripts/train_sd3.py of yifan123/flow_grpo@74db691 writes
    ``((mean - mean_ref)**2).mean(dims) / (2 * std_dev_t**2)``; ``gaussian``: the transition std,
    which makes the term the true KL between the two Gaussian transitions (1/(-dt) times weaker
    per step for flow_grpo; identical for cps)."""
    if form == "flow_grpo":
        return step.std_dev_t
    if form == "gaussian":
        return step.std
    raise ValueError(f"unknown KL form {form!r}; expected one of {KL_FORMS}")


def nonzero_advantage_samples(adv, minibatches: int, rng) -> np.ndarray:
    """Sorted indices of the samples the update trains on (Flow-GRPO, scripts/train_sd3.py
    after computing advantages): those whose advantage is non-zero; when their count does not
    divide into ``minibatches`` equal minibatches, ``minibatches - count % minibatches``
    zero-advantage samples drawn at random by ``rng`` are added back (if there are that many).
    No sample at all when every advantage is zero."""
    adv = np.asarray(adv)
    keep = adv != 0
    count = int(keep.sum())
    if count % minibatches:
        zero = np.flatnonzero(~keep)
        need = minibatches - count % minibatches
        if len(zero) >= need:
            keep[zero[rng.permutation(len(zero))[:need]]] = True
    return np.flatnonzero(keep)


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay used after optimizer step ``step``: min((1 + s) / (10 + s), decay) with warm-up
    (flow_grpo/ema.py ``get_current_decay``), else ``decay``."""
    return min((1 + step) / (10 + step), decay) if warmup else decay


def ema_update(ema: dict, params: dict, step: int, *, decay: float, warmup: bool = True, interval: int = 8,
               repeats: int = 8) -> bool:
    """Flow-GRPO's EMA (flow_grpo/ema.py, driven from scripts/train_sd3.py) after optimizer step
    ``step`` (1-based count of optimizer steps so far): only when (step + 1) % interval == 0,
    ``repeats`` times ema += (1 - d)(p - ema) with d = ema_decay(step). Upstream calls the EMA
    once per gradient-accumulation batch with the same optimizer step count, so on its 8-GPU SD3
    recipe (8 accumulated batches per optimizer step) the update is applied 8 times in a row;
    ``repeats`` reproduces that (ema <- d^r ema + (1 - d^r) p). In place; returns whether it
    updated."""
    if (step + 1) % interval:
        return False
    keep = ema_decay(step, decay, warmup) ** repeats
    with torch.no_grad():
        for k, p in params.items():
            ema[k].mul_(keep).add_(p.detach().to(ema[k].dtype), alpha=1.0 - keep)
    return True
