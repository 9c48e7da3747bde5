"""GRPO objective pieces (Flow-GRPO) and OP-GRPO's off-policy correction.

Kept free of I/O so the math can be tested against independent recomputation.
"""

from __future__ import annotations

import numpy as np
import torch

CORRECTIONS = ("sequence", "none", "per_step")


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
    """KL between the policy's and the reference's Gaussian transitions (same std), per sample:
    mean over latent dims of (mean - mean_ref)^2 / (2 std^2), as in Flow-GRPO."""
    dims = tuple(range(1, mean.ndim))
    return ((mean.float() - mean_ref.float()) ** 2).mean(dim=dims) / (2 * std.float() ** 2)
