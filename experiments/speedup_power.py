"""Power of the `speedup` experiment's primary analysis (docs/speedup.md), by simulation.

    PYTHONPATH=$PWD python experiments/speedup_power.py [--reps 200] [--seeds 16]

Each simulated run's held-out reward curve is base + g_i h(t / s) + e_it at t = 0, 3, 6, 9, 12 (`--every 2`: 0, 2, ..., 12)
(h(u) = (1 - exp(-u / 6)) / (1 - exp(-2)): a saturating rise reaching 1 at u = 12 and still rising
after it), with g_i ~ N(G, sd_seed) the seed's gain at T, e_it ~ N(0, sd_eval) per evaluation (0 at
the base), Flow-GRPO s = 1 and OP-GRPO s = the true time factor (0.5: it gets in t iterations where
Flow-GRPO gets in 2t). Gains of the two arms of one seed correlate with rho (common random numbers).
Prints, per scenario, the share of simulated experiments whose decision is each outcome. Assumptions
and the figures they come from: docs/speedup.md "Power".
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from opgrpo_stages.report import speedup_stats as S

T = 12  # iterations; the evaluations are at 0 (the base) and every `--every` iterations up to T


def h(u):
    return (1 - np.exp(-u / 6.0)) / (1 - np.exp(-2.0))


def simulate(rng, xs, seeds, gain, s, sd_seed, sd_eval, rho, base=0.322):
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=seeds)
    g_flow, g_op = gain + sd_seed * z[:, 0], gain + sd_seed * z[:, 1]
    flow = base + g_flow[:, None] * h(xs / 1.0) + rng.normal(0, sd_eval, (seeds, len(xs)))
    op = base + g_op[:, None] * h(xs / s) + rng.normal(0, sd_eval, (seeds, len(xs)))
    flow[:, 0] = op[:, 0] = base
    return flow, op


def decision(xs, flow, op, rng, b):
    g = S.t_interval(flow[:, -1] - flow[:, 0])
    if not g[1] > 0:
        return S.CANNOT_TEST
    est, lo, hi, _ = S.bca(lambda i: S.ratio(xs, flow[i], op[i]), len(flow), rng, b=b)
    return S.decide(S.Interval(est, lo, hi, len(flow), ""))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--b", type=int, default=1000)
    ap.add_argument("--every", type=int, default=3, help="iterations between held-out evaluations (T = 12)")
    ap.add_argument("--central", action="store_true", help="only the central assumptions' rows")
    a = ap.parse_args(argv)
    xs = np.arange(0, T + 1, a.every)
    outcomes = [S.SPEEDUP, S.INCONCLUSIVE, S.NO_SPEEDUP, S.CANNOT_TEST]
    print(f"seeds per arm {a.seeds}, evaluations at {xs.tolist()}, {a.reps} simulated experiments per row, "
          f"BCa with {a.b} resamples")
    print("| gain G at T | sd seed | sd eval | rho | true s | " + " | ".join(outcomes) + " |")
    print("|---" * (5 + len(outcomes)) + "|")
    rng = np.random.default_rng(20261206)
    rows = list(itertools.product([0.03], [0.02], [0.01], [0.0], [1.0, 0.75, 0.5, 0.342]))  # central
    if not a.central:
        rows += [*itertools.product([0.02, 0.045], [0.02], [0.01], [0.0], [1.0, 0.5]),
                 *itertools.product([0.03], [0.03], [0.015], [0.0], [1.0, 0.5]),
                 *itertools.product([0.03], [0.02], [0.01], [0.5], [0.5])]
    for gain, sd_seed, sd_eval, rho, s in rows:
        got = [decision(xs, *simulate(rng, xs, a.seeds, gain, s, sd_seed, sd_eval, rho), rng, a.b)
               for _ in range(a.reps)]
        shares = " | ".join(f"{got.count(o) / a.reps:.2f}" for o in outcomes)
        print(f"| {gain} | {sd_seed} | {sd_eval} | {rho} | {s} | {shares} |", flush=True)


if __name__ == "__main__":
    main()
