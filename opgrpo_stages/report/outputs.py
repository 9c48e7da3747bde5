"""Paths of the report: the files it writes per experiment and the files it reads.

Light on purpose (layout only): the Snakefile imports it while it parses. An experiment's report is
one of two kinds (``kind``): the paper's (``experiment`` and ``seeds``) or, for the experiments in
``SPEEDUP``, the pre-registered speed-up test (``speedup``, docs/speedup.md), with outputs of its own."""

from __future__ import annotations

from .. import layout as L


SPEEDUP = ("speedup",)  # experiments whose report is the speed-up test (report/speedup.py)


def kind(exp: str) -> str:
    """``"speedup"`` for the experiments in ``SPEEDUP``, else ``"paper"``."""
    return "speedup" if exp in SPEEDUP else "paper"


def outputs_for(exp: str) -> dict:
    """The files the report of ``exp`` writes (key -> path), by its ``kind``."""
    if kind(exp) == "speedup":
        return speedup_outputs(exp)
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
        "ablation_differences": f"{r}/tables/ablation_differences.csv",  # Fig. 6's numbers
        "logp_cliff": f"{r}/tables/logp_cliff.csv",
        "fig2": f"{r}/figures/fig2_logp_cliff.png",
        "fig3": f"{r}/figures/fig3_curves.png",
        "fig6a": f"{r}/figures/fig6a_ablations.png",
        "fig6b": f"{r}/figures/fig6b_replay_fraction.png",
    }


def final_inputs(runs: list[str]) -> list[str]:
    """The ``final_eval`` tables a report reads: the base model, then every run's checkpoints."""
    return [L.final_eval("base", "base")] + [L.final_eval(r, c) for c in ("intermediate", "best") for r in runs]


def speedup_outputs(exp: str) -> dict:
    """The speed-up test's files (``exp`` may be a wildcard): the table, then the per-run CSVs its
    numbers come from, then the figure of the held-out curves."""
    r = L.results(exp)
    return {
        "speedup_md": f"{r}/tables/speedup.md",
        "heldout_curves": f"{r}/tables/heldout_curves.csv",   # run x evaluation (base at iteration 0)
        "per_iteration": f"{r}/tables/per_iteration.csv",     # run x iteration: training rewards, seconds
        "per_run": f"{r}/tables/per_run.csv",                 # run: the per-seed values the analysis uses
        "speedup_fig": f"{r}/figures/speedup_heldout.png",
    }


def speedup_inputs(run_cfgs: dict) -> dict:
    """Every file the speed-up report reads (``load.collect`` and ``load.stage_seconds``), for the
    Snakefile's ``report_speedup`` rule: the base evaluation, then per run (``run_cfgs``: run ->
    resolved config) its per-iteration tables, its buffer tables (replay runs: ``collect`` reads
    them), its held-out evaluations and the benchmark files of its stages."""
    out = {"base": L.eval_table("base", 0)}
    for r, rc in run_cfgs.items():
        n = rc["train"]["iterations"]
        out[f"{r}_metrics"] = [L.metrics(r, k) for k in range(n)]
        out[f"{r}_samples"] = [L.samples(r, k) for k in range(n)]
        out[f"{r}_rewards"] = [L.rewards(r, k) for k in range(n)]
        if rc["replay"]["fraction"] > 0:
            out[f"{r}_buffer"] = [L.buffer(r, k)[1] for k in range(n - 1)]
        out[f"{r}_eval"] = [L.eval_table(r, k) for k in L.eval_iterations(rc)]
        out[f"{r}_seconds"] = [L.benchmark(r, k, s) for k in range(n) for s in benchmarked_stages(k, n)]
    return out


def benchmarked_stages(k: int, n: int) -> list[str]:
    """The benchmarked stages of iteration ``k`` of ``n``: buffer_update does not run after the last
    iteration (its buffer would be no stage's input)."""
    return [s for s in L.BENCHMARKED if not (s == "buffer_update" and k == n - 1)]
