"""The Flow-GRPO policy: one reverse SDE step of a flow-matching model and its log-probability.

Convention (diffusers' flow matching): ``x_sigma = (1 - sigma) x_0 + sigma * noise`` and the model
predicts ``v = noise - x_0``; sampling goes from ``sigma_0 = 1`` down to ``sigma_S = 0`` with
``dt = sigma_next - sigma < 0``.

``flow_grpo`` (Flow-GRPO, eq. of its SDE sampler), noise level ``a``:
    std   = a * sqrt(sigma / (1 - sigma))        (at sigma = 1 the denominator is 1 - sigma_1)
    mean  = x (1 + std^2 dt / (2 sigma)) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt
    x'    = mean + std sqrt(-dt) eps
``cps`` (coefficients-preserving sampling): std = sigma_next sin(a pi / 2),
    mean = x0_hat (1 - sigma_next) + noise_hat sqrt(sigma_next^2 - std^2).
The log-prob is the Gaussian density of x' around ``mean``, reduced over latent dimensions by
the mean (Flow-GRPO's choice) or the sum. For ``cps`` Flow-GRPO drops every constant and the
variance: log p = -(x' - mean)^2 (``cps_logp='flow_grpo'``, the default, as
flow_grpo/diffusers_patch/sd3_sde_with_logprob.py does in its ``sde_type == 'cps'`` branch at
yifan123/flow_grpo@74db691); ``cps_logp='gaussian'`` keeps the full density. Everything is computed
in float32 whatever the model's dtype, because the late steps have tiny variances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("flow_grpo", "cps")
REDUCTIONS = ("mean", "sum")
CPS_LOGP = ("flow_grpo", "gaussian")


@dataclass
class Step:
    prev_sample: torch.Tensor  # x at sigma_next
    log_prob: torch.Tensor  # (B,) reduced log-density of prev_sample
    mean: torch.Tensor  # transition mean
    std: torch.Tensor  # scalar transition std (std_t * sqrt(-dt) for flow_grpo)
    std_dev_t: torch.Tensor  # scalar std Flow-GRPO returns: std_t without sqrt(-dt) (flow_grpo), = std (cps)


def std_dev_t(sigma: float, sigma_next: float, noise_level: float, sigma_max: float, kind: str = "flow_grpo") -> float:
    """The ``std_dev_t`` Flow-GRPO's step returns (and its KL term divides by): for ``flow_grpo``
    a * sqrt(sigma / (1 - sigma)), the diffusion coefficient *without* the sqrt(-dt) of the
    transition; for ``cps`` the transition std itself."""
    if kind == "flow_grpo":
        denom = 1.0 - (sigma_max if sigma >= 1.0 else sigma)
        return noise_level * math.sqrt(sigma / denom)
    return transition_std(sigma, sigma_next, noise_level, sigma_max, kind)


def transition_std(sigma: float, sigma_next: float, noise_level: float, sigma_max: float, kind: str = "flow_grpo") -> float:
    """Standard deviation of x' given x (a python float: all samples of a step share it)."""
    if kind == "flow_grpo":
        return std_dev_t(sigma, sigma_next, noise_level, sigma_max, kind) * math.sqrt(sigma - sigma_next)
    if kind == "cps":
        return sigma_next * math.sin(noise_level * math.pi / 2)
    raise ValueError(f"unknown SDE kind {kind!r}; expected one of {KINDS}")


def transition_mean(x, v, sigma: float, sigma_next: float, noise_level: float, sigma_max: float, kind: str = "flow_grpo"):
    x = x.float()
    v = v.float()
    dt = sigma_next - sigma
    if kind == "flow_grpo":
        denom = 1.0 - (sigma_max if sigma >= 1.0 else sigma)
        var_t = noise_level**2 * sigma / denom  # std_t^2
        return x * (1 + var_t / (2 * sigma) * dt) + v * (1 + var_t * (1 - sigma) / (2 * sigma)) * dt
    if kind == "cps":
        std = transition_std(sigma, sigma_next, noise_level, sigma_max, kind)
        x0_hat = x - sigma * v
        noise_hat = x + (1 - sigma) * v
        return x0_hat * (1 - sigma_next) + noise_hat * math.sqrt(max(sigma_next**2 - std**2, 0.0))
    raise ValueError(f"unknown SDE kind {kind!r}; expected one of {KINDS}")


def gaussian_log_prob(x, mean, std: float, reduction: str = "mean"):
    """log N(x; mean, std^2) per element, reduced over all but the batch dimension."""
    x = x.float()
    mean = mean.float()
    lp = -((x - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return _reduce(lp, reduction)


def _reduce(lp, reduction: str):
    dims = tuple(range(1, lp.ndim))
    if reduction == "mean":
        return lp.mean(dim=dims)
    if reduction == "sum":
        return lp.sum(dim=dims)
    raise ValueError(f"unknown log-prob reduction {reduction!r}; expected one of {REDUCTIONS}")


def sde_step(
    v,
    x,
    sigma: float,
    sigma_next: float,
    *,
    noise_level: float,
    sigma_max: float,
    prev_sample=None,
    noise=None,
    kind: str = "flow_grpo",
    reduction: str = "mean",
    cps_logp: str = "flow_grpo",
) -> Step:
    """One stochastic step. Give ``prev_sample`` to score an existing transition, else ``noise``
    (standard normal, shape of x) to draw one. A zero-variance step (CPS at sigma_next = 0) is
    deterministic and gets log-prob 0; it must not be trained on."""
    mean = transition_mean(x, v, sigma, sigma_next, noise_level, sigma_max, kind)
    std = transition_std(sigma, sigma_next, noise_level, sigma_max, kind)
    if prev_sample is None:
        if noise is None:
            raise ValueError("sde_step needs prev_sample or noise")
        prev_sample = mean + std * noise.float() if std > 0 else mean
    prev_sample = prev_sample.float()
    if kind == "cps" and cps_logp == "flow_grpo":
        log_prob = _reduce(-((prev_sample.detach() - mean) ** 2), reduction)
    elif kind == "cps" and cps_logp != "gaussian":
        raise ValueError(f"unknown CPS log-prob form {cps_logp!r}; expected one of {CPS_LOGP}")
    elif std > 0:
        log_prob = gaussian_log_prob(prev_sample.detach(), mean, std, reduction)
    else:
        log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    std_t = std_dev_t(sigma, sigma_next, noise_level, sigma_max, kind)
    return Step(prev_sample, log_prob, mean, torch.tensor(std, dtype=torch.float32),
                torch.tensor(std_t, dtype=torch.float32))


def ode_step(v, x, sigma: float, sigma_next: float):
    """Plain Euler step of the probability-flow ODE (evaluation, noise level 0)."""
    return x.float() + v.float() * (sigma_next - sigma)


def num_train_steps(num_steps: int, timestep_fraction: float = 0.99) -> int:
    """Flow-GRPO trains on the first floor(fraction * S) steps (so the last step is skipped)."""
    return max(1, int(math.floor(timestep_fraction * num_steps)))
