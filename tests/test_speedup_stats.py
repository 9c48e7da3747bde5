"""The speed-up estimator (issue 21 §2) on synthetic curves with fixed seeds: a real speed-up is
shown, none is not claimed, and the guard and corner cases give what docs/speedup.md says."""

import math

import numpy as np
import pytest

from opgrpo_stages.report import speedup_stats as S
from opgrpo_stages.report import stats as ST

XS = np.arange(0, 13, 2)  # base, then after iterations 2, 4, ..., 12 (T = 12)
BASE = 0.33


def _curve(t, gain=0.06, tau=6.0):
    return BASE + gain * (1 - np.exp(-np.asarray(t, dtype=float) / tau))


def _arms(s, seeds=16, noise=0.006, seed=0, gain=0.06):
    """Flow-GRPO seeds rise as _curve; OP-GRPO = Flow-GRPO time-scaled by s (at t it has what
    Flow-GRPO has at t / s); per-seed level offsets and per-evaluation noise; the base exact."""
    rng = np.random.default_rng(seed)

    def arm(scale):
        level = rng.normal(1.0, 0.15, size=(seeds, 1))
        y = BASE + (_curve(XS / scale, gain) - BASE) * level + rng.normal(0, noise, size=(seeds, len(XS)))
        y[:, 0] = BASE
        return y

    return arm(1.0), arm(s)


def test_hitting_times_interpolate_start_and_censor_at_T():
    y = np.array([[0.0, 1.0, 2.0], [0.0, 0.5, 0.6], [3.0, 3.0, 3.0]])
    t = S.hitting_times([0, 2, 4], y, 1.5)
    assert t.tolist() == [3.0, 4.0, 0.0]  # halfway from 2 to 4; never reached -> T; already at the start


def test_ratio_of_a_curve_against_itself_is_one_and_undefined_when_the_target_is_not_above_start():
    flow, _ = _arms(1.0)
    assert S.ratio(XS, flow, flow) == pytest.approx(1.0)
    flat = np.full_like(flow, BASE)
    assert math.isnan(S.ratio(XS, flat, flow))


def test_time_scaled_by_half_gives_an_interval_below_one():
    flow, op = _arms(0.5)
    res = S.analyse(XS, flow, op, np.random.default_rng(1), b=2000)
    assert res.testable and res.ratio.high < 1 and res.decision == S.SPEEDUP
    assert 0.3 < res.ratio.estimate < 0.8
    assert res.secondaries["time_warp_s"].contains(0.5) and res.secondaries["time_warp_s"].high < 1
    assert res.secondaries["heldout_mean_difference"].low > 0


def test_no_time_scaling_gives_an_interval_containing_one():
    flow, op = _arms(1.0)
    res = S.analyse(XS, flow, op, np.random.default_rng(1), b=2000)
    assert res.testable and res.ratio.contains(1.0) and res.decision == S.INCONCLUSIVE
    assert res.secondaries["time_warp_s"].contains(1.0)
    assert res.secondaries["heldout_mean_difference"].contains(0.0)


def test_slower_opgrpo_is_no_speedup():
    flow, op = _arms(2.0, noise=0.002)
    res = S.analyse(XS, flow, op, np.random.default_rng(1), b=2000)
    assert res.ratio.low >= 1 and res.decision == S.NO_SPEEDUP


def test_guard_gives_no_ratio_when_flowgrpo_does_not_improve():
    flow, op = _arms(0.5, gain=0.0, noise=0.01)
    res = S.analyse(XS, flow, op, np.random.default_rng(1), b=500)
    assert res.gain.contains(0.0)
    assert not res.testable and res.ratio is None and res.decision == S.CANNOT_TEST


def test_guard_when_flowgrpo_ends_below_the_base():
    flow, op = _arms(0.5, gain=-0.05, noise=0.002)
    res = S.analyse(XS, flow, op, np.random.default_rng(1), b=500)
    assert res.gain.high < 0 and res.ratio is None and res.decision == S.CANNOT_TEST


def test_opgrpo_that_never_reaches_counts_T():
    flow, _ = _arms(1.0)
    op = np.full_like(flow, BASE)  # never improves: every seed at T
    assert S.ratio(XS, flow, op) == pytest.approx(12.0 / S.hitting_times(XS, flow, flow[:, -1].mean()).mean())


def test_bca_matches_t_interval_for_a_mean_of_normal_data():
    v = np.random.default_rng(3).normal(1.0, 1.0, 40)
    est, lo, hi, bad = ST.bca(lambda i: v[i].mean(axis=-1), len(v), np.random.default_rng(4), b=4000)
    m, tlo, thi, _ = ST.t_interval(v)
    assert bad == 0 and est == pytest.approx(m)
    assert lo == pytest.approx(tlo, abs=0.08) and hi == pytest.approx(thi, abs=0.08)


def test_secondaries_are_paired_differences_with_t_intervals():
    flow, op = _arms(1.0)
    res = S.analyse(XS, flow, op, np.random.default_rng(1), b=200, strict_flow=np.full(16, 0.2),
                    strict_op=np.full(16, 0.2) + np.linspace(0, 0.1, 16), train_flow=np.zeros(16),
                    train_op=np.zeros(16), secs_flow=np.full(16, 9.0), secs_op=np.full(16, 8.0))
    d = res.secondaries["strict_geneval_at_T_difference"]
    assert d.estimate == pytest.approx(0.05) and d.low < 0.05 < d.high and d.method == "paired t, 16 seeds"
    assert res.secondaries["seconds_per_iteration_opgrpo"].estimate == pytest.approx(8.0)


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="paired"):
        S.analyse(XS, np.zeros((3, 7)), np.zeros((4, 7)), np.random.default_rng(0))


def test_shipped_speedup_experiment_follows_the_preregistered_design():
    """docs/speedup.md: two arms, >= 16 paired seeds each, T = 12, EMA off, 288 x 1 held-out after
    iterations 3, 6, 9, 12, groups of 8 x 8 prompts (the amendment for the time budget), the main job's
    OP-GRPO, common streams."""
    from pathlib import Path

    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L

    cfg = C.expand_seed_runs(C.load(Path(__file__).resolve().parents[1] / "config.yaml"))
    runs = cfg["experiments"]["speedup"]
    arms = {"sp_flowgrpo": [], "sp_opgrpo": []}
    for r in runs:
        rc = C.resolve_run(cfg, r)
        arms[r.split("-seed")[0]].append(rc["seed"])
        assert rc["train"]["iterations"] == 12 and not rc["train"]["ema"]["enabled"]
        assert (rc["train"]["group_size"], rc["train"]["prompts_per_iteration"]) == (8, 8)
        assert rc["eval"]["samples_per_prompt"] == 1 and [k + 1 for k in L.eval_iterations(rc)] == [3, 6, 9, 12]
        assert rc["seed_streams"] == "common" and "value" not in rc["reward"].get("options", {}).get("geneval", {})
        assert rc["replay"]["fraction"] == (0.25 if r.startswith("sp_opgrpo") else 0.0)
    assert sorted(arms["sp_flowgrpo"]) == sorted(arms["sp_opgrpo"]) and len(set(arms["sp_flowgrpo"])) >= 16


def test_speedup_table_states_ratio_decision_guard_and_seeds():
    from opgrpo_stages.report.tables import speedup_markdown as markdown

    flow, op = _arms(0.5)
    md = markdown(S.analyse(XS, flow, op, np.random.default_rng(1), b=500), {"sp_flowgrpo": 16, "sp_opgrpo": 16})
    assert "**speed-up shown**" in md and "paired BCa bootstrap over 16 seed pairs" in md
    assert "sp_flowgrpo 16, sp_opgrpo 16" in md and "guard: Flow-GRPO's gain" in md
    flat, op = _arms(0.5, gain=0.0, noise=0.01)
    md = markdown(S.analyse(XS, flat, op, np.random.default_rng(1), b=200), {"sp_flowgrpo": 16, "sp_opgrpo": 16})
    assert "not computed | this regime cannot test the claim" in md and f"**{S.CANNOT_TEST}**" in md
