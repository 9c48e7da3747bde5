"""Runs grouped into methods, the reference methods, and each run's curves, from the loaded ``data``.

Runs named ``<name>-seed<k>`` (``seeds``, ``experiment_seeds``) are repeats of ``<name>``; a
"method" is the set of repeats of one name. No I/O, no plotting."""

from __future__ import annotations

import re

import numpy as np

from .stats import smooth


def method_of(run: str) -> str:
    return re.sub(r"-seed\d+$", "", run)


def methods(data) -> dict[str, list[str]]:
    """method -> its runs, in the experiment's order."""
    out: dict[str, list[str]] = {}
    for run in data["runs"]:
        out.setdefault(method_of(run), []).append(run)
    return out


def seed_of(data, run) -> int:
    return int(data["runs"][run]["cfg"]["seed"])


def flowgrpo_method(data, groups):
    """Flow-GRPO: the first method without replay."""
    return next((g for g, rs in groups.items() if data["runs"][rs[0]]["cfg"]["replay"]["fraction"] == 0), None)


def reference_method(data, groups):
    """OP-GRPO as configured: the first method with replay (the experiment lists it first)."""
    return next((g for g, rs in groups.items() if data["runs"][rs[0]]["cfg"]["replay"]["fraction"] > 0), None)


def differs_only_in(data, groups, a, b, keys) -> bool:
    """Methods a and b have the same replay settings except ``keys``."""
    if a is None:
        return False
    ca, cb = (data["runs"][groups[m][0]]["cfg"]["replay"] for m in (a, b))
    return all(ca[k] == cb[k] for k in ca if k not in keys)


def paired(data, ref_method, method, groups):
    """Runs of ``method`` and of ``ref_method`` with the same seed, as two aligned lists."""
    ref_by_seed = {seed_of(data, r): r for r in groups[ref_method]}
    pairs = [(ref_by_seed[seed_of(data, r)], r) for r in groups[method] if seed_of(data, r) in ref_by_seed]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def cliff_method(data, groups):
    """Fig. 2's run: the method with replay and no truncation (every stored step kept and
    rescored under the current policy), else the OP-GRPO reference."""
    for g, rs in groups.items():
        c = data["runs"][rs[0]]["cfg"]["replay"]
        if c["fraction"] > 0 and c["truncation"] is None:
            return g
    return reference_method(data, groups)


def figure_groups(data):
    """(Fig. 3, Fig. 6a, Fig. 6b) method lists: Flow-GRPO and OP-GRPO; with the methods that share
    OP-GRPO's replay fraction (the algorithm ablations); with those that differ from OP-GRPO in
    the replay fraction only."""
    groups = methods(data)
    fg, ref = flowgrpo_method(data, groups), reference_method(data, groups)
    base = [g for g in (fg, ref) if g is not None]
    if ref is None:
        return base, base, base
    rc = data["runs"][groups[ref][0]]["cfg"]["replay"]
    same = lambda c, keys: all(c[k] == rc[k] for k in keys)  # noqa: E731
    algo = [g for g, rs in groups.items() if g not in base and data["runs"][rs[0]]["cfg"]["replay"]["fraction"] == rc["fraction"]]
    others = [k for k in rc if k != "fraction"]
    frac = [g for g, rs in groups.items() if g not in base and data["runs"][rs[0]]["cfg"]["replay"]["fraction"] > 0
            and same(data["runs"][rs[0]]["cfg"]["replay"], others)]
    return base, base + algo, base + sorted(frac, key=lambda g: data["runs"][groups[g][0]]["cfg"]["replay"]["fraction"])


def heldout_curve(data, run):
    """(iterations trained, held-out reward): the base model at 0, then each evaluation's measured
    value (the policy after iteration k at k + 1); no smoothing across evaluations."""
    d = data["runs"][run]
    ks = sorted(d["evals"])
    xs = [0] + [k + 1 for k in ks]
    ys = [data["base"]["heldout_reward"]] + [d["evals"][k]["heldout_reward"] for k in ks]
    return xs, ys


def heldout_array(data, run):
    """``heldout_curve`` with the rewards as an array."""
    xs, ys = heldout_curve(data, run)
    return xs, np.asarray(ys, dtype=float)


TRAIN_WINDOW = 5  # iterations in the training curves' trailing average


def train_curve(data, run):
    """Training reward of the groups drawn from the prompt set (``reward_dataset_drawn``: a group
    replaying a buffer entry was chosen for its past reward, so it is left out) per iteration, the
    first rollout at index 0, ``TRAIN_WINDOW``-iteration trailing average."""
    return np.asarray(smooth(data["runs"][run]["metrics"]["reward_dataset_drawn"], TRAIN_WINDOW))
