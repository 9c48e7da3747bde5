"""The report's table files: CSV and Markdown writers, cell formats, and the paper's Tables 1 and 2.

The DataFrames of the other tables are built by the entry points (``experiment``, ``seeds``);
this module only formats and writes them (atomically); ``speedup_markdown`` is the `speedup`
experiment's table as text (issue 21, docs/speedup.md)."""

from __future__ import annotations

import math
import re

from .load import final_evals
from .speedup_stats import CANNOT_TEST, Interval, SpeedupResult

TABLE2_COLUMNS = {"color": "Color", "shape": "Shape", "texture": "Texture", "spatial": "2D-Spatial",
                  "3d_spatial": "3D-Spatial", "numeracy": "Numeracy", "non_spatial": "Non-Spatial",
                  "complex": "Complex"}
PAPER_AVERAGE = ("color", "shape", "spatial", "3d_spatial", "numeracy", "non_spatial")  # Table 2's "Average"


def write_csv(df, path, float_format=None):
    from ..formats.atomic import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)


def write_md(path, text: str):
    from ..formats.atomic import write_text

    write_text(path, text)


def markdown(df) -> str:
    """A Markdown table; floats with 3 decimals, everything else as ``str``."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def markdown_cells(df) -> str:
    """A Markdown table; each distinct "unavailable (<reason>)" becomes "unavailable [n]" with the
    reason once below the table, so a row stays readable (the CSV keeps the full text per cell)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    reasons: dict[str, int] = {}

    def cell(v) -> str:
        m = re.fullmatch(r"unavailable \((.*)\)", str(v), flags=re.S)
        if m:
            n = reasons.setdefault(m.group(1), len(reasons) + 1)
            return f"unavailable [{n}]"
        return str(v)

    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(v).replace("|", "\\|") for v in r) + " |")
    notes = [f"[{n}] {why}" for why, n in reasons.items()]
    return "\n".join(lines) + "\n" + ("\n" + "  \n".join(notes) + "\n" if notes else "")


def fmt_interval(point, lo, hi, pct=False) -> str:
    """``point [lo, hi]`` (3 decimals, or percent with 1 decimal and inf as "not reached");
    ``point`` alone when the interval is nan (one seed)."""
    f = (lambda x: "not reached" if x == math.inf else f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    if lo != lo:
        return f(point)
    return f"{f(point)} [{f(lo)}, {f(hi)}]"


def weight_section(spread) -> str:
    """results.md's section on the sequence weight (``experiment.weight_spread``); empty without replay."""
    if spread.empty:
        return ""
    return ("\n## Sequence weight of replayed samples\n\nOver all iterations; `weight_std_mean`: the mean of the "
            "per-iteration std (docs/opgrpo.md, \"What the mean reduction implies\").\n\n" + markdown(spread) + "\n")


def _cell(row) -> str:
    if row["status"] == "ok":
        return f"{row['value']:.4f}"
    return f"unavailable ({row['reason']})"


def paper_tables(cfg: dict, runs: list[str]):
    """(Table 1, Table 2) as DataFrames of strings (numbers formatted, unavailable with reasons).
    Table 2's "Average" is the plain mean of the paper's six categories, unavailable unless all six are."""
    import pandas as pd

    from ..stages.final_eval import TABLE1_METRICS, task_metric_name

    task = task_metric_name(cfg)
    t1, t2 = [], []
    for df in final_evals(runs):
        head = {"model": df["model"].iloc[0], "checkpoint": df["checkpoint"].iloc[0],
                "step": 0 if df["checkpoint"].iloc[0] == "base" else int(df["iteration"].iloc[0]) + 1}
        one = {r["metric"]: _cell(r) for _, r in df[df["table"] == "table1"].iterrows()}
        row1 = {**head, task: one.pop(task)}
        for name, col in TABLE1_METRICS.items():
            row1[col] = one.pop(name, "unavailable (not in eval.metrics)")
        row1.update(one)  # further configured metrics, after the paper's
        t1.append(row1)
        two = df[df["table"] == "table2"].set_index("metric")
        row2 = dict(head)
        for c, col in TABLE2_COLUMNS.items():
            row2[col] = _cell(two.loc[c]) if c in two.index else "unavailable (not evaluated)"
        ok = [c for c in PAPER_AVERAGE if c in two.index and two.loc[c, "status"] == "ok"]
        row2["Average"] = (f"{sum(float(two.loc[c, 'value']) for c in ok) / len(ok):.4f}" if len(ok) == len(PAPER_AVERAGE)
                           else "unavailable (needs " + ", ".join(TABLE2_COLUMNS[c] for c in PAPER_AVERAGE) + ")")
        t2.append(row2)
    return pd.DataFrame(t1), pd.DataFrame(t2)


def write_paper_tables(cfg: dict, runs: list[str], out: dict):
    t1, t2 = paper_tables(cfg, runs)
    note = ("step: iterations trained (0 = base). intermediate = eval.intermediate or the evaluated iteration "
            "nearest the middle of the run; best = the evaluated iteration with the highest held-out task score "
            "(earliest on ties). Unavailable metrics name the missing model or setting.\n")
    for df, csv, md, title in ((t1, "table1_csv", "table1_md", "Table 1: task metric and unseen metrics"),
                               (t2, "table2_csv", "table2_md", "Table 2: T2I-CompBench++")):
        write_csv(df, out[csv])
        write_md(out[md], f"# {title}\n\n" + markdown_cells(df) + "\n" + note)
    return t1, t2


# ------------------------------------------------------------------ the `speedup` experiment (issue 21)

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


def interval_cell(iv: Interval, digits: int = 3) -> str:
    """'estimate [low, high]' of an ``Interval``."""
    return f"{_num(iv.estimate, digits)} [{_num(iv.low, digits)}, {_num(iv.high, digits)}]"


def speedup_markdown(res: SpeedupResult, seeds_per_arm: dict[str, int], evaluated_on: str = "288 prompts x 1 noise") -> str:
    """`results/speedup/tables/speedup.md` (layout fixed by docs/speedup.md): R, its interval and
    method, the decision, the guard, the secondaries in the pre-registered order, seeds per arm."""
    arms = ", ".join(f"{arm} {n}" for arm, n in seeds_per_arm.items())
    lines = [
        "# Does OP-GRPO reach Flow-GRPO's held-out reward at T in fewer iterations?",
        "",
        "Pre-registered design: docs/speedup.md. 95% intervals; the method and n are in each row.",
        "",
        "| quantity | value [95% interval] | method |",
        "|---|---|---|",
        f"| seeds per arm | {arms} | paired by seed (common random numbers) |",
        f"| base held-out reward | {_num(res.base, 4)} | {evaluated_on} |",
        f"| L: Flow-GRPO's held-out reward at T | {_num(res.target, 4)} | mean over its seeds |",
        f"| guard: Flow-GRPO's gain L - base | {interval_cell(res.gain, 4)} | {res.gain.method} |",
    ]
    if res.ratio is None:
        lines.append(f"| R (iterations to L, OP-GRPO / Flow-GRPO) | not computed | {CANNOT_TEST} |")
    else:
        lines.append(f"| R (iterations to L, OP-GRPO / Flow-GRPO) | {interval_cell(res.ratio)} | {res.ratio.method} |")
    lines.append(f"| **decision** | **{res.decision}** | upper < 1: speed-up shown; lower >= 1: no speed-up; else inconclusive |")
    if res.undefined_resamples:
        lines.append(f"| resamples with L not above the base (left out) | {res.undefined_resamples} | |")
    lines += ["", "Secondaries (in the pre-registered order; none overturns the decision):", "",
              "| secondary | value [95% interval] | method |", "|---|---|---|"]
    for key, label in SECONDARY_LABELS:
        iv = res.secondaries.get(key)
        if iv is not None:
            lines.append(f"| {label} | {interval_cell(iv, 1 if key.startswith('seconds') else 3)} | {iv.method} |")
    return "\n".join(lines) + "\n"
