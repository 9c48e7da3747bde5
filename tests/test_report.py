"""Report arithmetic: smoothing, crossing iteration, steps-to-target pairing."""

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
    return {"cfg": cfg, "metrics": pd.DataFrame({"reward_mean": rewards, "reward_fresh": rewards}),
            "evals": {k: {"heldout_reward": v} for k, v in evals.items()}}


def test_steps_to_target_pairs_runs_by_seed():
    data = {"base": {"heldout_reward": 0.2}, "runs": {
        "flowgrpo": _run(0, 0.0, [0.2] * 10 + [0.35] * 10, {9: 0.3, 19: 0.4}),
        "opgrpo": _run(0, 0.25, [0.4] * 20, {9: 0.4, 19: 0.45}),
        "flowgrpo-seed1": _run(1, 0.0, [0.3] * 20, {9: 0.3, 19: 0.3}),
        "opgrpo-seed1": _run(1, 0.25, [0.1] * 20, {9: 0.1, 19: 0.1}),
    }}
    s = steps_to_target(data).set_index("run")
    assert s.loc["opgrpo", "reference"] == "flowgrpo" and s.loc["opgrpo-seed1", "reference"] == "flowgrpo-seed1"
    # flowgrpo's smoothed held-out curve ends at (0.3+0.4)/2 = 0.35; opgrpo's is 0.3 at 10, 0.425 at 20
    assert s.loc["opgrpo", "heldout_iterations"] == pytest.approx(10 + 10 * (0.35 - 0.3) / 0.125)
    assert s.loc["opgrpo", "train_iterations"] == 1.0
    assert math.isnan(s.loc["opgrpo-seed1", "heldout_fraction"])
    text = headline(steps_to_target(data))
    assert "1/2 seeds reach" in text
