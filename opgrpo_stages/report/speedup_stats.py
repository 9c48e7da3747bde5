"""The `speedup` experiment's statistics (issue 21, design in docs/speedup.md): pure functions of
numpy arrays, no I/O.

Curves are arrays (seeds, points): the held-out reward of each seed at ``xs`` = iterations trained,
``xs[0] = 0`` the base model (the same value for every seed), then the evaluations; row i of the
Flow-GRPO and of the OP-GRPO array is the same seed (a pair: common random numbers). T = xs[-1].

Primary metric R = mean over OP-GRPO seeds of the iterations to reach L / the same for Flow-GRPO,
L = the mean of Flow-GRPO's curves at T. A seed's curve is linear between evaluations and unsmoothed;
a seed that never reaches L counts T (censoring pulls R towards 1: it can hide a speed-up, never
invent one). Interval: BCa bootstrap over seed pairs, L recomputed in every resample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .stats import B, bca, t_interval

SPEEDUP, NO_SPEEDUP, INCONCLUSIVE = "speed-up shown", "no speed-up", "inconclusive"
CANNOT_TEST = "this regime cannot test the claim"


def hitting_times(xs, curves, targets):
    """Iterations at which each curve first reaches its target (y >= target), linear between points;
    ``xs[-1]`` (T) where it never does. ``curves`` (..., points); ``targets`` broadcast to
    ``curves.shape[:-1]``. A curve whose first point already reaches the target gets ``xs[0]``."""
    xs = np.asarray(xs, dtype=float)
    y = np.asarray(curves, dtype=float)
    t = np.broadcast_to(np.asarray(targets, dtype=float), y.shape[:-1])
    reach = y >= t[..., None]
    first = reach.argmax(axis=-1)
    prev = np.maximum(first - 1, 0)
    y1 = np.take_along_axis(y, first[..., None], -1)[..., 0]
    y0 = np.take_along_axis(y, prev[..., None], -1)[..., 0]
    x1, x0 = xs[first], xs[prev]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(first == 0, xs[0], x0 + (t - y0) / (y1 - y0) * (x1 - x0))
    return np.where(reach.any(axis=-1), x, xs[-1])


def ratio(xs, flow, op):
    """R for curves (..., seeds, points): mean OP-GRPO hitting time / mean Flow-GRPO hitting time
    of L = Flow-GRPO's seed mean at T; nan where L is not above the start (both means are 0 there)."""
    flow, op = np.asarray(flow, dtype=float), np.asarray(op, dtype=float)
    target = flow[..., -1].mean(axis=-1)
    t_flow = hitting_times(xs, flow, target[..., None]).mean(axis=-1)
    t_op = hitting_times(xs, op, target[..., None]).mean(axis=-1)
    start = flow[..., 0].mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(target > start, t_op / t_flow, np.nan)


def warp_factor(xs, flow_mean, op_mean, grid=None):
    """Time-warp s fitted so that OP-GRPO's mean curve at s t matches Flow-GRPO's at t (s = 0.5: OP-GRPO
    gets in t/2 iterations where Flow-GRPO gets in t; comparable to the paper's 34.2%): the s of
    ``grid`` (default 0.05-4, log-spaced) minimising the mean squared difference over Flow-GRPO's
    evaluations t > 0 with s t <= T (OP-GRPO's curve linear between its points), at least two of them.
    Curves (..., points); returns (...,)."""
    xs = np.asarray(xs, dtype=float)
    fm, om = np.asarray(flow_mean, dtype=float), np.asarray(op_mean, dtype=float)
    grid = np.geomspace(0.05, 4.0, 401) if grid is None else np.asarray(grid, dtype=float)
    ts = xs[1:]
    err = np.full(fm.shape[:-1] + (len(grid),), np.inf)
    for j, s in enumerate(grid):
        use = s * ts <= xs[-1] + 1e-9
        if use.sum() < 2:
            continue
        at = s * ts[use]
        # OP-GRPO's curve at s t: linear between its points (vectorised np.interp over leading axes)
        k = np.clip(np.searchsorted(xs, at, side="right") - 1, 0, len(xs) - 2)
        w = (at - xs[k]) / (xs[k + 1] - xs[k])
        op_at = om[..., k] * (1 - w) + om[..., k + 1] * w
        err[..., j] = ((op_at - fm[..., 1:][..., use]) ** 2).mean(axis=-1)
    return grid[err.argmin(axis=-1)]


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    n: int
    method: str

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass
class SpeedupResult:
    seeds: int
    base: float
    target: float
    gain: Interval                    # Flow-GRPO's L - base, per seed (the guard)
    testable: bool                    # the gain's interval lies above 0
    ratio: Interval | None            # R (None when not testable)
    decision: str
    undefined_resamples: int = 0      # resamples where L was not above the start (left out)
    secondaries: dict = field(default_factory=dict)


def decide(r: Interval) -> str:
    """Speed-up shown if the interval's upper bound < 1, no speed-up if its lower bound >= 1."""
    if r.high < 1:
        return SPEEDUP
    if r.low >= 1:
        return NO_SPEEDUP
    return INCONCLUSIVE


def analyse(xs, flow, op, rng, *, strict_flow=None, strict_op=None, train_flow=None, train_op=None,
            secs_flow=None, secs_op=None, b: int = B) -> SpeedupResult:
    """The pre-registered analysis (docs/speedup.md). ``flow``, ``op``: held-out reward curves
    (seeds, points), paired by row, column 0 the base. Optional per-seed secondaries, paired by row:
    ``strict_*`` strict GenEval at T, ``train_*`` mean training reward over dataset-drawn groups,
    ``secs_*`` wall-clock seconds per iteration."""
    xs = np.asarray(xs, dtype=float)
    flow, op = np.asarray(flow, dtype=float), np.asarray(op, dtype=float)
    if flow.shape != op.shape or flow.ndim != 2 or flow.shape[1] != len(xs):
        raise ValueError(f"curves must be (seeds, {len(xs)} points) and paired: got {flow.shape} and {op.shape}")
    n = flow.shape[0]
    base = float(flow[:, 0].mean())
    target = float(flow[:, -1].mean())
    # the guard: did Flow-GRPO itself improve? paired per seed (its final minus the base it started from)
    g = t_interval(flow[:, -1] - flow[:, 0])
    gain = Interval(*g, method=f"t, {g[3]} seeds")
    testable = bool(gain.low > 0)
    r_int, decision, undefined = None, CANNOT_TEST, 0
    if testable:
        est, lo, hi, undefined = bca(lambda i: ratio(xs, flow[i], op[i]), n, rng, b=b)
        r_int = Interval(est, lo, hi, n, method=f"paired BCa bootstrap over {n} seed pairs, {b} resamples")
        decision = decide(r_int)
    sec = {}
    d = t_interval(op[:, 1:].mean(axis=1) - flow[:, 1:].mean(axis=1))
    sec["heldout_mean_difference"] = Interval(*d, method=f"paired t, {d[3]} seeds")
    s = bca(lambda i: warp_factor(xs, flow[i].mean(axis=-2), op[i].mean(axis=-2)), n, rng, b=b)
    sec["time_warp_s"] = Interval(*s[:3], n, method=f"paired BCa bootstrap over {n} seed pairs")
    for name, a, c in (("strict_geneval_at_T", strict_flow, strict_op), ("train_reward_dataset_groups", train_flow, train_op)):
        if a is not None and c is not None:
            t = t_interval(np.asarray(c, dtype=float) - np.asarray(a, dtype=float))
            sec[name + "_difference"] = Interval(*t, method=f"paired t, {t[3]} seeds")
            for arm, v in (("flowgrpo", a), ("opgrpo", c)):
                t = t_interval(v)
                sec[f"{name}_{arm}"] = Interval(*t, method=f"t, {t[3]} seeds")
    for arm, v in (("flowgrpo", secs_flow), ("opgrpo", secs_op)):
        if v is not None:
            t = t_interval(v)
            sec[f"seconds_per_iteration_{arm}"] = Interval(*t, method=f"t, {t[3]} runs")
    return SpeedupResult(n, base, target, gain, testable, r_int, decision, undefined, sec)
