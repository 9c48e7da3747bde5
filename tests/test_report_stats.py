"""The report's statistics (opgrpo_stages/report/stats.py), each against a hand-worked value or an
independent recomputation. They pin today's behaviour, corner cases included."""

import math

import numpy as np
import pytest

from opgrpo_stages.report.stats import (NOT_REACHED, REACHED, UNDEFINED_FIRST, UNDEFINED_REFERENCE,
                                        censored_fraction, censored_summary, crossing, dataset_drawn_mean,
                                        degenerate_shares, smooth, steps_to_target, t_interval)


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


def test_degenerate_shares_treat_a_group_without_fresh_samples_as_tied():
    groups = [0, 0, 1, 1]
    sources = ["replay", "replay", "fresh", "fresh"]
    rewards = [0.1, 0.2, 0.5, 0.5]
    assert degenerate_shares(groups, sources, rewards) == (0.5, 1.0)


# steps to target (issue 21 §3) ---------------------------------------------------------------------

def test_steps_to_target_is_undefined_when_the_reference_did_not_improve():
    # the reference ends at or below its own start: nothing to reach, whatever the run does
    assert steps_to_target([0, 1, 2], [0.1, 0.5, 0.9], 0.3, 0.3)[1] == UNDEFINED_REFERENCE
    assert steps_to_target([0, 1, 2], [0.1, 0.5, 0.9], 0.2, 0.3)[1] == UNDEFINED_REFERENCE
    assert math.isnan(steps_to_target([0, 1, 2], [0.1, 0.5, 0.9], 0.2, 0.3)[0])


def test_a_crossing_at_the_first_point_is_not_a_speedup():
    x, status = steps_to_target([0, 1, 2], [0.5, 0.4, 0.6], 0.45, 0.3)
    assert math.isnan(x) and status == UNDEFINED_FIRST


def test_steps_to_target_reached_and_not_reached():
    assert steps_to_target([0, 10, 20], [0.1, 0.3, 0.5], 0.35, 0.1) == (pytest.approx(12.5), REACHED)
    x, status = steps_to_target([0, 10, 20], [0.1, 0.2, 0.3], 0.35, 0.1)
    assert math.isnan(x) and status == NOT_REACHED
    assert censored_fraction(12.5, REACHED, 20) == 0.625
    assert censored_fraction(math.nan, NOT_REACHED, 20) == 1.0  # censored at the reference's length
    assert math.isnan(censored_fraction(math.nan, UNDEFINED_FIRST, 20))


def test_summary_over_seeds_never_averages_only_the_seeds_that_reach():
    line = censored_summary([0.4, 1.0], [REACHED, NOT_REACHED])
    assert "1/2 seeds reach" in line and "0.700" in line and "lower bound" in line  # (0.4 + 1.0) / 2, not 0.4
    line = censored_summary([0.4, math.nan], [REACHED, UNDEFINED_REFERENCE])
    assert "mean undefined" in line and "did not improve" in line and "0.400" not in line


def test_t_interval_matches_the_textbook_formula():
    v = [0.2, 0.4, 0.3, 0.5, 0.35]
    m, lo, hi, n = t_interval(v)
    half = 2.7764451051977987 * np.std(v, ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert (m, lo, hi, n) == (pytest.approx(0.35), pytest.approx(0.35 - half), pytest.approx(0.35 + half), 5)
    assert math.isnan(t_interval([0.3])[1])


def test_dataset_drawn_mean_leaves_out_every_group_that_replays():
    groups = [0, 0, 1, 1, 2, 2]
    sources = ["fresh", "fresh", "fresh", "replay", "fresh", "fresh"]
    rewards = [0.1, 0.3, 0.9, 0.9, 0.5, 0.7]  # group 1's fresh sample (0.9) is left out with its replayed one
    assert dataset_drawn_mean(groups, sources, rewards) == pytest.approx(0.4)
    assert math.isnan(dataset_drawn_mean([0, 0], ["replay", "fresh"], [1, 0]))
