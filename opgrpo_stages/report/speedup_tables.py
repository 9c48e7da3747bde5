"""`results/speedup/tables/speedup.md`: the speedup experiment's result as text (no I/O; the
report's entry point writes the string). Layout fixed by docs/speedup.md."""

from __future__ import annotations

import math

from .speedup_stats import CANNOT_TEST, Interval, SpeedupResult

SECONDARY_LABELS = [
    ("heldout_mean_difference", "1. held-out reward, mean over the evaluations, OP-GRPO - Flow-GRPO"),
    ("time_warp_s", "2. time-warp factor s (OP-GRPO at s t matches Flow-GRPO at t)"),
    ("strict_geneval_at_T_flowgrpo", "3. strict GenEval at T, Flow-GRPO"),
    ("strict_geneval_at_T_opgrpo", "3. strict GenEval at T, OP-GRPO"),
    ("strict_geneval_at_T_difference", "3. strict GenEval at T, OP-GRPO - Flow-GRPO"),
    ("train_reward_dataset_groups_flowgrpo", "4. training reward, dataset-drawn groups, Flow-GRPO"),
    ("train_reward_dataset_groups_opgrpo", "4. training reward, dataset-drawn groups, OP-GRPO"),
    ("train_reward_dataset_groups_difference", "4. training reward, dataset-drawn groups, OP-GRPO - Flow-GRPO"),
    ("seconds_per_iteration_flowgrpo", "5. wall-clock seconds per iteration, Flow-GRPO"),
    ("seconds_per_iteration_opgrpo", "5. wall-clock seconds per iteration, OP-GRPO"),
]


def _num(x: float, digits: int) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def cell(iv: Interval, digits: int = 3) -> str:
    """'estimate [low, high]'."""
    return f"{_num(iv.estimate, digits)} [{_num(iv.low, digits)}, {_num(iv.high, digits)}]"


def markdown(res: SpeedupResult, seeds_per_arm: dict[str, int]) -> str:
    arms = ", ".join(f"{arm} {n}" for arm, n in seeds_per_arm.items())
    lines = [
        "# Does OP-GRPO reach Flow-GRPO's held-out reward at T in fewer iterations?",
        "",
        "Pre-registered design: docs/speedup.md. 95% intervals; the method and n are in each row.",
        "",
        "| quantity | value [95% interval] | method |",
        "|---|---|---|",
        f"| seeds per arm | {arms} | paired by seed (common random numbers) |",
        f"| base held-out reward | {_num(res.base, 4)} | 288 prompts x 1 noise |",
        f"| L: Flow-GRPO's held-out reward at T | {_num(res.target, 4)} | mean over its seeds |",
        f"| guard: Flow-GRPO's gain L - base | {cell(res.gain, 4)} | {res.gain.method} |",
    ]
    if res.ratio is None:
        lines.append(f"| R (iterations to L, OP-GRPO / Flow-GRPO) | not computed | {CANNOT_TEST} |")
    else:
        lines.append(f"| R (iterations to L, OP-GRPO / Flow-GRPO) | {cell(res.ratio)} | {res.ratio.method} |")
    lines.append(f"| **decision** | **{res.decision}** | upper < 1: speed-up shown; lower >= 1: no speed-up; else inconclusive |")
    if res.undefined_resamples:
        lines.append(f"| resamples with L not above the base (left out) | {res.undefined_resamples} | |")
    lines += ["", "Secondaries (in the pre-registered order; none overturns the decision):", "",
              "| secondary | value [95% interval] | method |", "|---|---|---|"]
    for key, label in SECONDARY_LABELS:
        iv = res.secondaries.get(key)
        if iv is not None:
            lines.append(f"| {label} | {cell(iv, 1 if key.startswith('seconds') else 3)} | {iv.method} |")
    return "\n".join(lines) + "\n"
