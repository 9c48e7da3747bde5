"""The report's statistics (opgrpo_stages/report/stats.py), each against a hand-worked value or an
independent recomputation. They pin today's behaviour, corner cases included."""

import math

import numpy as np
import pytest

from opgrpo_stages.report.stats import (B, bootstrap, crossing, crossing_fraction, degenerate_shares, seed_spread,
                                        smooth)


# smoothing ---------------------------------------------------------------------------------------

def test_smooth_equals_a_mean_over_the_trailing_window():
    rng = np.random.default_rng(3)
    v = rng.normal(size=17)
    for w in (1, 2, 5, 17):
        want = [v[max(0, i - w + 1): i + 1].mean() for i in range(len(v))]
        assert smooth(v, w) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_smooth_window_edges():
    # the first window-1 points average the shorter prefix: 1, (1+2)/2, (1+2+3)/3, then full windows of 3
    assert list(smooth([1, 2, 3, 4, 5], 3)) == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0])
    # a window longer than the series is cut to the series: a running mean
    assert list(smooth([2, 4, 6], 5)) == pytest.approx([2.0, 3.0, 4.0])
    assert list(smooth([7.0], 5)) == [7.0]
    assert len(smooth([], 5)) == 0
    assert list(smooth([1, 3, 5], 1)) == [1.0, 3.0, 5.0]  # window 1: the values themselves


# crossings / steps to target ---------------------------------------------------------------------

def test_crossing_interpolates_between_evaluations():
    # below at x=10 (0.3), above at x=20 (0.5): 0.35 is a quarter of the way -> 12.5
    assert crossing([0, 10, 20], [0.1, 0.3, 0.5], 0.35) == pytest.approx(12.5)
    # uneven spacing: between x=3 (y=1) and x=7 (y=3), target 2.5 -> 3 + 4 * 1.5/2 = 6
    assert crossing([0, 3, 7], [0.0, 1.0, 3.0], 2.5) == pytest.approx(6.0)


def test_crossing_target_exactly_at_a_point_and_at_the_start():
    assert crossing([0, 10, 20], [0.1, 0.3, 0.5], 0.3) == 10.0
    assert crossing([5, 10], [0.5, 0.6], 0.4) == 5.0  # reached at the first point: its x, no extrapolation
    assert crossing([5, 10], [0.4, 0.6], 0.4) == 5.0


def test_crossing_never_reached_is_nan():
    assert math.isnan(crossing([0, 10, 20], [0.1, 0.2, 0.39], 0.4))
    assert math.isnan(crossing([], [], 0.0))


def test_crossing_is_the_first_point_reaching_the_target_even_after_a_dip():
    # above at x=10, below at x=20, above at x=30: the first crossing (interpolated from x=0) counts
    assert crossing([0, 10, 20, 30], [0.0, 1.0, 0.0, 1.0], 0.5) == pytest.approx(5.0)


def test_crossing_fraction_uses_seed_mean_curves():
    ref = np.array([[0.0, 0.2, 0.4], [0.0, 0.4, 0.6]])  # mean final value 0.5
    run = np.array([[0.0, 0.6, 0.6], [0.0, 0.2, 0.6]])  # mean 0, 0.4, 0.6: reaches 0.5 halfway from x=10 to x=20
    assert crossing_fraction(ref, run, [0, 10, 20], [0, 10, 20], 20) == pytest.approx(15.0 / 20)
    # never reached: +inf (not nan), so a bootstrap can rank it
    assert crossing_fraction(ref, run * 0.5, [0, 10, 20], [0, 10, 20], 20) == math.inf


# bootstrap intervals -----------------------------------------------------------------------------

def test_bootstrap_reproduces_with_a_fixed_seed_and_matches_an_independent_resampling():
    v = np.random.default_rng(11).normal(0.5, 0.1, size=8)
    p, lo, hi = bootstrap(v, np.random.default_rng(42))
    # same draws, recomputed by hand: B resamples of 8 seed indices, mean each, inverted-cdf percentiles
    idx = np.random.default_rng(42).integers(0, 8, size=(B, 8))
    means = np.sort(v[idx].mean(axis=1))
    assert p == pytest.approx(v.mean())
    assert lo == means[math.ceil(0.025 * B) - 1] and hi == means[math.ceil(0.975 * B) - 1]
    assert (p, lo, hi) == bootstrap(v, np.random.default_rng(42))


def test_bootstrap_interval_covers_a_known_mean():
    # 200 experiments of 10 seeds from N(0.3, 0.05): the 95% interval should cover 0.3 most of the time
    # (percentile bootstrap with 10 seeds undercovers a little: nominal 95%, here between 85% and 100%)
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):
        _, lo, hi = bootstrap(rng.normal(0.3, 0.05, size=10), rng)
        covered += lo <= 0.3 <= hi
    assert 0.85 <= covered / 200 <= 1.0


def test_bootstrap_per_column_and_one_seed():
    v = np.array([[0.0, 1.0], [2.0, 1.0]])  # two seeds, two columns: intervals per column
    p, lo, hi = bootstrap(v, np.random.default_rng(0))
    assert list(p) == [1.0, 1.0] and list(lo) == [0.0, 1.0] and list(hi) == [2.0, 1.0]
    p, lo, hi = bootstrap([[0.1, 0.2]], np.random.default_rng(0))
    assert list(p) == [0.1, 0.2] and np.isnan(lo).all() and np.isnan(hi).all()


def test_bootstrap_with_a_statistic_keeps_inf_in_the_ranking():
    # statistic: inf when the resample's mean is below 0.5 (a target "not reached"), else the mean
    stat = lambda v: math.inf if v.mean() < 0.5 else float(v.mean())  # noqa: E731
    p, lo, hi = bootstrap([0.0, 1.0], np.random.default_rng(0), stat)
    # resamples {0,0} -> inf (p 1/4), {0,1} -> 0.5 (1/2), {1,1} -> 1.0 (1/4): lowest attained 0.5, highest inf
    assert (p, lo, hi) == (0.5, 0.5, math.inf)


# degenerate groups and spreads over seeds --------------------------------------------------------

def test_degenerate_shares_treat_a_group_without_fresh_samples_as_tied():
    groups = [0, 0, 1, 1]
    sources = ["replay", "replay", "fresh", "fresh"]
    rewards = [0.1, 0.2, 0.5, 0.5]
    assert degenerate_shares(groups, sources, rewards) == (0.5, 1.0)


def test_seed_spread_ignores_seeds_not_reaching():
    n_reached, n, mean, std = seed_spread([0.2, math.nan, 0.4])
    assert (n_reached, n) == (2, 3) and mean == pytest.approx(0.3) and std == pytest.approx(0.1)  # ddof 0
    assert seed_spread([0.2, math.nan])[3] is None
    assert math.isnan(seed_spread([math.nan])[2])
