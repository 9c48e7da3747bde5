"""Paths of the report: the files it writes per experiment and the ``final_eval`` tables it reads.

Light on purpose (layout only): the Snakefile imports it while it parses."""

from __future__ import annotations

from .. import layout as L


def outputs_for(exp: str) -> dict:
    r = L.results(exp)
    return {
        "curves": f"{r}/figures/training_curves.png",
        "heldout": f"{r}/figures/heldout_geneval.png",
        "grid": f"{r}/figures/samples_base_vs_trained.png",
        "logp": f"{r}/figures/logp_per_step.png",
        "clip": f"{r}/figures/clipped_fraction.png",
        "csv": f"{r}/tables/results.csv",
        "md": f"{r}/tables/results.md",
        "speed": f"{r}/tables/steps_to_target.csv",
        "table1_csv": f"{r}/tables/table1.csv",
        "table1_md": f"{r}/tables/table1.md",
        "table2_csv": f"{r}/tables/table2.csv",
        "table2_md": f"{r}/tables/table2.md",
        # seed-aggregated claims of the paper (report/seeds.py): tables, then Figs. 2, 3, 6a, 6b
        "training_curves": f"{r}/tables/training_curves.csv",
        "degenerate": f"{r}/tables/degenerate_groups.csv",
        "headline_csv": f"{r}/tables/headline.csv",
        "headline_md": f"{r}/tables/headline.md",
        "ablations_csv": f"{r}/tables/ablations.csv",
        "ablations_md": f"{r}/tables/ablations.md",
        "logp_cliff": f"{r}/tables/logp_cliff.csv",
        "fig2": f"{r}/figures/fig2_logp_cliff.png",
        "fig3": f"{r}/figures/fig3_curves.png",
        "fig6a": f"{r}/figures/fig6a_ablations.png",
        "fig6b": f"{r}/figures/fig6b_replay_fraction.png",
    }


def final_inputs(runs: list[str]) -> list[str]:
    """The ``final_eval`` tables a report reads: the base model, then every run's checkpoints."""
    return [L.final_eval("base", "base")] + [L.final_eval(r, c) for c in ("intermediate", "best") for r in runs]
