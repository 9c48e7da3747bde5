"""GRPO advantages, clipped surrogate, and OP-GRPO's sequence-level correction."""

import math

import numpy as np
import pytest
import torch

from opgrpo_stages.grpo import (clipped_surrogate, effective_sample_size, group_advantages, kl_to_reference,
                                sequence_weights)


def test_global_std_advantages_match_hand_computation():
    r = np.array([1.0, 0.0, 0.5, 0.5, 0.2, 0.8])
    g = np.array([0, 0, 1, 1, 2, 2])
    adv = group_advantages(r, g, std_mode="global")
    std = r.std()
    expected = np.array([0.5, -0.5, 0.0, 0.0, -0.3, 0.3]) / (std + 1e-4)
    np.testing.assert_allclose(adv, expected)


def test_per_prompt_std_and_clipping():
    r = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    g = np.zeros(8, int)
    adv = group_advantages(r, g, std_mode="prompt", clip=2.0)
    assert adv[0] == 2.0  # (1 - 0.125) / 0.33 = 2.65 -> clipped
    np.testing.assert_allclose(adv[1:], -0.125 / (r.std() + 1e-4))
    assert np.all(group_advantages(np.ones(4), np.zeros(4, int)) == 0)


def test_sequence_weight_is_exactly_one_for_fresh_and_unchanged_policy():
    lp = torch.randn(5, 6)
    kept = torch.zeros(5, 6, dtype=torch.bool)
    assert torch.equal(sequence_weights(lp, lp.clone(), kept), torch.ones(5))
    kept[:, :3] = True  # replayed, but the policy did not change: logp_old == logp_behavior
    assert torch.equal(sequence_weights(lp, lp.clone(), kept), torch.ones(5))


def test_sequence_weight_matches_independent_product_over_kept_steps():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 6, generator=g) * 0.1
    beh = torch.randn(4, 6, generator=g) * 0.1
    kept = torch.zeros(4, 6, dtype=torch.bool)
    kept[1, :2] = True
    kept[2, :6] = True
    w = sequence_weights(old, beh, kept)
    for i in range(4):
        prod = 1.0
        for t in range(6):
            if kept[i, t]:
                prod *= math.exp(float(old[i, t])) / math.exp(float(beh[i, t]))
        assert float(w[i]) == pytest.approx(prod, rel=1e-5)
    assert float(w[0]) == 1.0 and float(w[3]) == 1.0


def test_clipped_surrogate_at_ratio_one_is_minus_advantage():
    lp = torch.randn(6)
    adv = torch.linspace(-1, 1, 6)
    loss, ratio, clipped = clipped_surrogate(lp, lp.clone(), adv, 1e-4)
    assert torch.equal(ratio, torch.ones(6))
    assert torch.equal(loss, -adv)
    assert not clipped.any()


def test_clipped_surrogate_takes_the_pessimistic_branch():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    logr = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    loss, ratio, clipped = clipped_surrogate(logr, torch.zeros(4), adv, 0.2)
    # A>0: min(r, clip(r)) -> 1.2 for r=1.5, 0.5 for r=0.5 ; A<0: max(r, clip) -> 1.5, 0.8
    np.testing.assert_allclose(loss.numpy(), [-1.2, -0.5, 1.5, 0.8], rtol=1e-6)
    assert clipped.tolist() == [True, True, True, True]


def test_kl_and_ess():
    m = torch.zeros(2, 3, 2, 2)
    ref = torch.ones(2, 3, 2, 2) * 0.5
    np.testing.assert_allclose(kl_to_reference(m, ref, torch.tensor(0.5)).numpy(), [0.5, 0.5])
    assert effective_sample_size(torch.ones(4)) == pytest.approx(4.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
