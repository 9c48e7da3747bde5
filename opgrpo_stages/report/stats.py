"""The report's statistics: pure functions of numbers (numpy arrays, lists, pandas columns).

No file is read or written here and nothing is drawn; ``load``, the entry points (``experiment``,
``seeds``, ``speedup``), ``speedup_stats``, ``tables`` and ``figures`` call these. What each
computes is stated exactly, corner cases included, because the published numbers are whatever
these return (tests:
``tests/test_report_stats.py``, ``tests/test_speedup_stats.py`` for ``bca`` and ``t_interval``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

B = 10000  # bootstrap resamples
LEVEL = 0.95  # two-sided level of every interval


def smooth(values, window: int = 5):
    """Trailing moving average: element ``i`` is the mean of ``values[max(0, i - window + 1) : i + 1]``
    (the first ``window - 1`` elements average over the shorter prefix available). A window longer
    than the series is cut to its length; an empty series gives an empty array."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return v
    w = min(window, len(v))
    c = np.convolve(v, np.ones(w) / w, mode="valid")
    return np.concatenate([np.cumsum(v[: w - 1]) / np.arange(1, w), c])


def crossing(xs, ys, target):
    """First x where the piecewise-linear curve through (xs, ys) reaches ``target`` (``y >= target``);
    nan if no point does. Between the last point below and the first point at or above the target
    the x is interpolated linearly; if the first point already reaches it, its x (no extrapolation
    before the curve starts). Only points are tested: a curve that rises above the target and falls
    back between two points is not seen."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0)) if y != y0 else float(x)
    return math.nan


REACHED, NOT_REACHED = "reached", "not reached"
UNDEFINED_REFERENCE = "undefined (the reference did not improve)"
UNDEFINED_FIRST = "undefined (reached at the first point, before any update)"


def steps_to_target(xs, ys, target, start):
    """(x, status) of the first x where the curve (xs, ys) reaches ``target`` (``crossing``):

    - ``UNDEFINED_REFERENCE``, x nan: ``target`` is not above ``start`` (the reference curve's own
      first value): the reference did not improve, so there is nothing to reach;
    - ``UNDEFINED_FIRST``, x nan: the curve's first point (before any update) already reaches it: a
      crossing there says nothing about learning faster;
    - ``NOT_REACHED``, x nan: no point reaches it;
    - ``REACHED``: x interpolated linearly between the last point below and the first at or above."""
    if not target > start:
        return math.nan, UNDEFINED_REFERENCE
    if len(ys) and ys[0] >= target:
        return math.nan, UNDEFINED_FIRST
    x = crossing(xs, ys, target)
    return (x, REACHED) if x == x else (math.nan, NOT_REACHED)


def censored_fraction(x: float, status: str, n_ref: int) -> float:
    """Steps to target as a fraction of the reference's ``n_ref`` iterations, a curve that never
    reaches it counted at ``n_ref`` (censored: 1.0, a lower bound on what it needs); nan when
    undefined."""
    if status == REACHED:
        return x / n_ref
    return 1.0 if status == NOT_REACHED else math.nan


def censored_summary(fractions, statuses) -> str:
    """One line over seeds: how many reach, the mean fraction over all seeds with the never-reaching
    ones counted at 1.0 (censored: a lower bound), and no mean at all when any seed is undefined
    (a mean over the seeds that happen to reach would be biased towards a speed-up)."""
    n = len(statuses)
    reach = sum(s == REACHED for s in statuses)
    undefined = [s for s in statuses if s.startswith("undefined")]
    if undefined:
        kinds = "; ".join(sorted(set(undefined)))
        return f"{reach}/{n} seeds reach; mean undefined: {len(undefined)} seed(s) {kinds}"
    cens = n - reach
    note = f", {cens} never reaching counted as 1.0 (a lower bound)" if cens else ""
    return f"{reach}/{n} seeds reach; mean fraction {float(np.mean(fractions)):.3f} over all {n} seeds{note}"


def degenerate_shares(groups, sources, rewards) -> tuple[float, float]:
    """(share of groups whose rewards all tie, share whose fresh samples' rewards all tie) in one
    iteration. A tied group has zero advantage for every sample: no signal (the paper's
    degenerate groups). The first is what the update sees (a replayed sample can break the tie);
    the second is what on-policy sampling alone would have given those prompts (a group without
    fresh samples counts as tied). Ties are exact float equality."""
    groups, sources, rewards = np.asarray(groups), np.asarray(sources), np.asarray(rewards, dtype=float)
    tied, tied_fresh = [], []
    for g in np.unique(groups):
        m = groups == g
        tied.append(bool(np.all(rewards[m] == rewards[m][0])))
        f = rewards[m & (sources == "fresh")]
        tied_fresh.append(bool(len(f) == 0 or np.all(f == f[0])))
    return float(np.mean(tied)), float(np.mean(tied_fresh))


def dataset_drawn_mean(groups, sources, rewards) -> float:
    """Mean reward of the groups whose prompt came from the prompt set: groups holding no replayed
    sample (a group that replays a buffer entry was chosen for its past reward, so its fresh
    samples are biased up too). nan if every group replays."""
    groups, sources, rewards = np.asarray(groups), np.asarray(sources), np.asarray(rewards, dtype=float)
    drawn = ~np.isin(groups, groups[sources == "replay"])
    return float(rewards[drawn].mean()) if drawn.any() else math.nan


def bca(stat, n: int, rng, *, level: float = LEVEL, b: int = B):
    """(estimate, low, high, undefined resamples) of ``stat`` by the BCa bootstrap over n units
    (Efron 1987). ``stat(idx)`` takes an int array (..., k) of unit indices and returns (...,):
    the statistic of those units, vectorised over leading axes. Resamples whose statistic is not
    finite are left out (their count is returned). Bias correction z0 from the share of resamples
    below the estimate (ties count half); acceleration from the leave-one-out jackknife."""
    theta = float(stat(np.arange(n)))
    idx = rng.integers(0, n, size=(b, n))
    boot = np.asarray(stat(idx), dtype=float)
    ok = np.isfinite(boot)
    boot = boot[ok]
    if not math.isfinite(theta) or len(boot) == 0:
        return theta, math.nan, math.nan, int((~ok).sum())
    if np.all(boot == boot[0]):
        return theta, float(boot[0]), float(boot[0]), int((~ok).sum())
    below = (np.sum(boot < theta) + 0.5 * np.sum(boot == theta)) / len(boot)
    z0 = sps.norm.ppf(np.clip(below, 1 / (2 * len(boot)), 1 - 1 / (2 * len(boot))))
    jack = np.asarray(stat(np.array([np.delete(np.arange(n), i) for i in range(n)])), dtype=float)
    jack = jack[np.isfinite(jack)]
    d = jack.mean() - jack
    den = 6.0 * (d ** 2).sum() ** 1.5
    a = float((d ** 3).sum() / den) if den > 0 else 0.0
    z = sps.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    p = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(boot, p)
    return theta, float(lo), float(hi), int((~ok).sum())


def t_interval(values, level: float = LEVEL):
    """(mean, low, high, n): Student-t interval of the mean of ``values`` (nan bounds below 2 values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n < 2:
        return (float(v.mean()) if n else math.nan), math.nan, math.nan, n
    half = sps.t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half), n
