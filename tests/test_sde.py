"""The Flow-GRPO SDE and its log-prob against independent recomputation."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from opgrpo_stages.sde import gaussian_log_prob, num_train_steps, ode_step, sde_step, transition_std


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, 4, 4, generator=g)
    v = torch.randn(3, 2, 4, 4, generator=g)
    eps = torch.randn(3, 2, 4, 4, generator=g)
    return x, v, eps


@pytest.mark.parametrize("sigma,sigma_next", [(0.8, 0.6), (0.3, 0.05), (0.05, 0.0)])
def test_flow_grpo_mean_std_and_logprob_match_formula(sigma, sigma_next):
    x, v, eps = _inputs()
    a, smax = 0.7, 0.95
    st = sde_step(v, x, sigma, sigma_next, noise_level=a, sigma_max=smax, noise=eps)
    # independent recomputation in float64 numpy
    xn, vn = x.double().numpy(), v.double().numpy()
    dt = sigma_next - sigma
    std_t = a * math.sqrt(sigma / (1 - sigma))
    mean = xn * (1 + std_t**2 / (2 * sigma) * dt) + vn * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_t * math.sqrt(-dt)
    np.testing.assert_allclose(st.mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.prev_sample.numpy(), mean + std * eps.double().numpy(), rtol=1e-5, atol=1e-6)
    expected = norm.logpdf(st.prev_sample.double().numpy(), loc=mean, scale=std).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(st.log_prob.numpy(), expected, rtol=1e-5)
    assert st.log_prob.dtype == torch.float32


def test_sigma_one_uses_one_minus_sigma_1():
    std = transition_std(1.0, 0.9, 0.7, sigma_max=0.9)
    assert std == pytest.approx(0.7 * math.sqrt(1.0 / (1 - 0.9)) * math.sqrt(0.1))
    x, v, eps = _inputs(1)
    st = sde_step(v, x, 1.0, 0.9, noise_level=0.7, sigma_max=0.9, noise=eps)
    assert torch.isfinite(st.log_prob).all() and torch.isfinite(st.mean).all()


def test_cps_matches_formula_and_sum_reduction():
    x, v, eps = _inputs(2)
    sigma, sn, a = 0.6, 0.4, 0.7
    st = sde_step(v, x, sigma, sn, noise_level=a, sigma_max=0.9, noise=eps, kind="cps", reduction="sum",
                  cps_logp="gaussian")
    std = sn * math.sin(a * math.pi / 2)
    x0 = x.double() - sigma * v.double()
    n = x.double() + (1 - sigma) * v.double()
    mean = x0 * (1 - sn) + n * math.sqrt(sn**2 - std**2)
    np.testing.assert_allclose(st.mean.numpy(), mean.numpy(), rtol=1e-5, atol=1e-6)
    expected = norm.logpdf(st.prev_sample.double().numpy(), loc=mean.numpy(), scale=std).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(st.log_prob.numpy(), expected, rtol=1e-5)


def test_scoring_an_existing_transition_gives_the_drawn_logprob():
    x, v, eps = _inputs(3)
    drawn = sde_step(v, x, 0.7, 0.5, noise_level=0.7, sigma_max=0.9, noise=eps)
    scored = sde_step(v, x, 0.7, 0.5, noise_level=0.7, sigma_max=0.9, prev_sample=drawn.prev_sample)
    assert torch.equal(drawn.log_prob, scored.log_prob)


def test_model_dtype_does_not_leak_into_logprob():
    x, v, eps = _inputs(4)
    st = sde_step(v.half(), x.half(), 0.7, 0.5, noise_level=0.7, sigma_max=0.9, noise=eps)
    assert st.log_prob.dtype == torch.float32 and st.mean.dtype == torch.float32


def test_gaussian_log_prob_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), 1.0, "max")


def test_ode_step_and_train_steps():
    x, v, _ = _inputs(5)
    assert torch.allclose(ode_step(v, x, 0.5, 0.25), x - 0.25 * v)
    assert num_train_steps(10) == 9 and num_train_steps(6) == 5 and num_train_steps(1) == 1


@pytest.mark.parametrize("sigma,sn", [(0.6, 0.4), (0.3, 0.1), (0.1, 0.02)])
def test_cps_default_logprob_is_flow_grpos_constant_free_form(sigma, sn):
    """Flow-GRPO's CPS branch (sd3_sde_with_logprob.py): log p = mean over dims of -(x' - mean)^2,
    no variance, no constants; the transition itself is unchanged."""
    x, v, eps = _inputs(6)
    a = 0.7
    st = sde_step(v, x, sigma, sn, noise_level=a, sigma_max=0.9, noise=eps, kind="cps")
    std = sn * math.sin(a * math.pi / 2)
    xd, vd = x.double().numpy(), v.double().numpy()
    mean = (xd - sigma * vd) * (1 - sn) + (xd + (1 - sigma) * vd) * math.sqrt(sn**2 - std**2)
    prev = mean + std * eps.double().numpy()
    np.testing.assert_allclose(st.prev_sample.numpy(), prev, rtol=1e-5, atol=1e-6)
    expected = (-((prev - mean) ** 2)).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(st.log_prob.numpy(), expected, rtol=1e-4, atol=1e-7)
    # the full density differs by 1/(2 std^2) in the quadratic term plus constants
    full = sde_step(v, x, sigma, sn, noise_level=a, sigma_max=0.9, noise=eps, kind="cps", cps_logp="gaussian")
    assert not np.allclose(full.log_prob.numpy(), st.log_prob.numpy())


def test_std_dev_t_is_flow_grpos_returned_std():
    """Flow-GRPO's step returns std_dev_t = a sqrt(sigma / (1 - sigma)) (sigma_1 at sigma = 1) for
    its SDE, and sigma_next sin(a pi / 2) for CPS; the transition std has the extra sqrt(-dt)."""
    x, v, eps = _inputs(7)
    a = 0.7
    for sigma, sn in [(1.0, 0.9), (0.7, 0.5), (0.2, 0.1)]:
        st = sde_step(v, x, sigma, sn, noise_level=a, sigma_max=0.9, noise=eps)
        expected = a * math.sqrt(sigma / (1 - (0.9 if sigma == 1.0 else sigma)))
        assert float(st.std_dev_t) == pytest.approx(expected, rel=1e-6)
        assert float(st.std) == pytest.approx(expected * math.sqrt(sigma - sn), rel=1e-6)
        cps = sde_step(v, x, sigma, sn, noise_level=a, sigma_max=0.9, noise=eps, kind="cps")
        assert float(cps.std_dev_t) == pytest.approx(sn * math.sin(a * math.pi / 2), rel=1e-6) == float(cps.std)
