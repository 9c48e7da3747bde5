"""Report arithmetic: smoothing, crossing iteration, steps-to-target pairing and its statuses."""

import math

import pandas as pd
import pytest

from opgrpo_stages.report.experiment import headline, steps_to_target
from opgrpo_stages.report.stats import crossing, smooth


def test_smooth_is_a_trailing_moving_average():
    assert list(smooth([1, 2, 3, 4], 2)) == [1.0, 1.5, 2.5, 3.5]


def test_crossing_interpolates_and_reports_never():
    assert crossing([0, 10, 20], [0.1, 0.3, 0.5], 0.4) == pytest.approx(15.0)
    assert crossing([0, 10], [0.5, 0.6], 0.4) == 0.0
    assert math.isnan(crossing([0, 10], [0.1, 0.2], 0.4))


def _run(seed, fraction, rewards, evals):
    cfg = {"seed": seed, "replay": {"fraction": fraction}, "train": {"iterations": len(rewards)}}
    return {"cfg": cfg, "metrics": pd.DataFrame({"reward_mean": rewards, "reward_fresh": rewards,
                                                 "reward_dataset_drawn": rewards}),
            "evals": {k: {"heldout_reward": v} for k, v in evals.items()}}


def test_steps_to_target_pairs_runs_by_seed():
    data = {"base": {"heldout_reward": 0.2}, "runs": {
        "flowgrpo": _run(0, 0.0, [0.2] * 10 + [0.35] * 10, {9: 0.3, 19: 0.4}),
        "opgrpo": _run(0, 0.25, [0.1] + [0.4] * 19, {9: 0.35, 19: 0.45}),
        "flowgrpo-seed1": _run(1, 0.0, [0.3] * 20, {9: 0.2, 19: 0.15}),
        "opgrpo-seed1": _run(1, 0.25, [0.1] * 20, {9: 0.1, 19: 0.1}),
        "flowgrpo-seed2": _run(2, 0.0, [0.2] * 10 + [0.35] * 10, {9: 0.3, 19: 0.4}),
        "opgrpo-seed2": _run(2, 0.25, [0.5] * 20, {9: 0.25, 19: 0.3}),
    }}
    s = steps_to_target(data).set_index("run")
    assert s.loc["opgrpo", "reference"] == "flowgrpo" and s.loc["opgrpo-seed1", "reference"] == "flowgrpo-seed1"
    # flowgrpo's measured held-out curve: base 0.2 at 0, 0.3 at 10, 0.4 at 20 (no smoothing): target 0.4;
    # opgrpo's: 0.2, 0.35, 0.45 -> reaches 0.4 halfway from 10 to 20
    assert s.loc["opgrpo", "heldout_iterations"] == pytest.approx(15.0)
    assert s.loc["opgrpo", "heldout_fraction"] == pytest.approx(0.75) and s.loc["opgrpo", "heldout_status"] == "reached"
    # training: the first rollout is iteration 0 (0.1, below flowgrpo's final 5-average 0.35); 5-average of
    # [0.1, 0.4, ...] is 0.25 at 1, 0.3 at 2, 0.325 at 3, 0.34 at 4, 0.4 at 5 -> reached between 4 and 5
    assert 4 < s.loc["opgrpo", "train_iterations"] < 5
    # flowgrpo-seed1 did not improve (held-out 0.2 -> 0.15, below the base; flat training): undefined, not 0%
    assert s.loc["opgrpo-seed1", "heldout_status"] == "undefined (the reference did not improve)"
    assert math.isnan(s.loc["opgrpo-seed1", "heldout_fraction"])
    assert s.loc["opgrpo-seed1", "train_status"] == "undefined (the reference did not improve)"
    # opgrpo-seed2's first rollout (0.5) is already above the target: a crossing before any update is no speed-up
    assert s.loc["opgrpo-seed2", "train_status"].startswith("undefined (reached at the first point")
    assert s.loc["opgrpo-seed2", "heldout_status"] == "not reached" and s.loc["opgrpo-seed2", "heldout_fraction"] == 1.0
    text = headline(steps_to_target(data))
    assert "1/3 seeds reach; mean undefined" in text and "did not improve" in text
