"""The `speedup` experiment's report end to end (issue 21): a tiny config's two arms x 2 seeds x 3
iterations through `snakemake speedup` in a temporary folder; every number of the per-run CSVs
recomputed here from the run files (Parquet tables, Snakemake's benchmark files), the table's
rows in the design's order, and every file the report reads declared as an input of its rule."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import snakemake_in, tiny_config

REPO = Path(__file__).resolve().parents[1]
ITERS = 3
ARMS = {"sp_flowgrpo": ["sp_flowgrpo", "sp_flowgrpo-seed1"], "sp_opgrpo": ["sp_opgrpo", "sp_opgrpo-seed1"]}
OUT = "results/speedup"


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    wd = tmp_path_factory.mktemp("speedup")
    # the first run fixes the base evaluation: 2 noises per prompt; the arms draw 1 (the base's first)
    arm = {"train": {"iterations": ITERS, "ema": {"enabled": False}}, "eval": {"samples_per_prompt": 1, "every": 1}}
    cfg = tiny_config(eval={"samples_per_prompt": 2},
                      runs={"flowgrpo": {}, "sp_flowgrpo": arm,
                            "sp_opgrpo": {**arm, "replay": {"fraction": 0.5, "truncation": 2}}},
                      experiments={"speedup": ["sp_flowgrpo", "sp_opgrpo"]}, experiment_seeds={"speedup": [1]})
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake_in(wd, "speedup")
    return wd


def test_outputs_are_the_declared_ones(wd):
    from opgrpo_stages.report.outputs import outputs_for

    files = outputs_for("speedup")
    assert sorted(Path(p).name for p in files.values()) == [
        "heldout_curves.csv", "per_iteration.csv", "per_run.csv", "speedup.md", "speedup_heldout.png"]
    for p in files.values():
        assert (wd / p).stat().st_size > 0, p
    assert not (wd / OUT / "tables" / "results.md").exists()  # the paper's report is not this experiment's


def test_heldout_curves_are_measured_points_with_the_base_first_noise(wd):
    held = pd.read_csv(wd / OUT / "tables" / "heldout_curves.csv")
    base = pd.read_parquet(wd / "runs" / "base" / "eval.parquet")
    assert base["sample_index"].nunique() == 2
    base_first = base.loc[base["sample_index"] == 0, "reward"].mean()
    assert base_first != pytest.approx(base["reward"].mean(), abs=1e-9)  # the two noises differ: the choice matters
    for arm, runs in ARMS.items():
        for run in runs:
            h = held[held["run"] == run].sort_values("iteration")
            assert h["iteration"].tolist() == list(range(ITERS + 1)) and set(h["arm"]) == {arm}
            assert h["heldout_reward"].iloc[0] == pytest.approx(base_first, abs=1e-6)
            for k in range(ITERS):
                ev = pd.read_parquet(wd / "runs" / run / "eval" / f"iter_{k:05d}.parquet")
                assert len(ev) == len(base) // 2
                assert h["heldout_reward"].iloc[k + 1] == pytest.approx(ev["reward"].mean(), abs=1e-6)


def test_per_iteration_training_reward_of_dataset_groups_and_seconds_from_benchmarks(wd):
    per = pd.read_csv(wd / OUT / "tables" / "per_iteration.csv")
    assert len(per) == 4 * ITERS
    for runs in ARMS.values():
        for run in runs:
            p = per[per["run"] == run].sort_values("iteration")
            assert p["iteration"].tolist() == list(range(ITERS))  # the first rollout is iteration 0
            for k in range(ITERS):
                it = wd / "runs" / run / f"iter_{k:05d}"
                smp, rew = pd.read_parquet(it / "samples.parquet"), pd.read_parquet(it / "rewards.parquet")
                replay_groups = set(smp.loc[smp["source"] == "replay", "group"])
                drawn = ~smp["group"].isin(replay_groups).to_numpy()
                assert p["reward_dataset_drawn"].iloc[k] == pytest.approx(rew["reward"][drawn].mean(), abs=1e-6)
                stages = ["rollout", "score", "policy_update"] + (["buffer_update"] if k < ITERS - 1 else [])
                secs = sum(float(pd.read_csv(wd / "logs" / run / f"iter_{k:05d}" / f"{s}.benchmark.tsv",
                                             sep="\t")["s"].iloc[-1]) for s in stages)
                assert p["seconds"].iloc[k] == pytest.approx(secs, abs=1e-4)
    # OP-GRPO replays after its first iteration: there the dataset-drawn reward leaves some groups out
    op = per[per["arm"] == "sp_opgrpo"]
    assert (op["n_replay"] > 0).any() and (op["reward_dataset_drawn"] != op["reward_fresh"]).any()


def test_table_states_design_rows_in_order_and_matches_the_per_run_values(wd):
    md = (wd / OUT / "tables" / "speedup.md").read_text()
    per_run = pd.read_csv(wd / OUT / "tables" / "per_run.csv")
    held = pd.read_csv(wd / OUT / "tables" / "heldout_curves.csv")
    assert "| seeds per arm | sp_flowgrpo 2, sp_opgrpo 2 |" in md
    assert re.search(r"\*\*(speed-up shown|no speed-up|inconclusive|this regime cannot test the claim)\*\*", md)
    assert "guard: Flow-GRPO's gain L - base" in md and "12 held-out images" in md
    flow_T = held[(held["arm"] == "sp_flowgrpo") & (held["iteration"] == ITERS)]["heldout_reward"].mean()
    assert f"| L: Flow-GRPO's held-out reward at T | {flow_T:.4f} |" in md
    order = [md.index(f"| {i}. ") for i in (1, 2, 3, 4, 5)]
    assert order == sorted(order)
    # secondary 1 is the paired difference of the per-run means in per_run.csv
    pr = per_run.set_index("run")
    d = [pr.loc[o, "heldout_mean_over_evaluations"] - pr.loc[f, "heldout_mean_over_evaluations"]
         for f, o in zip(ARMS["sp_flowgrpo"], ARMS["sp_opgrpo"])]
    row = next(ln for ln in md.splitlines() if ln.startswith("| 1. "))
    assert row.split("|")[2].strip().startswith(f"{np.mean(d):.3f}")
    assert "paired t, 2 seeds" in row


def test_every_file_the_report_reads_is_an_input_of_its_rule(wd):
    """The report's job lists every benchmark file, buffer table and evaluation of every run as
    inputs, and no final_eval; a deleted input is regenerated when the report runs (as for the
    paper's report: -f on its output)."""
    from opgrpo_stages import config as C
    from opgrpo_stages.report.outputs import speedup_inputs

    (wd / "runs" / "sp_opgrpo" / "iter_00001" / "buffer.parquet").unlink()
    res = snakemake_in(wd, "-n", "-f", f"{OUT}/tables/speedup.md")
    job = re.search(r"rule report_speedup:\n\s+input: (.*)\n", res.stdout)
    assert job, res.stdout[-3000:]
    listed = set(job.group(1).split(", "))
    cfg = C.expand_seed_runs(yaml.safe_load((wd / "config.yaml").read_text()))
    runs = [r for rs in ARMS.values() for r in rs]
    declared = speedup_inputs({r: C.resolve_run(cfg, r) for r in runs})
    expected = {p for v in declared.values() for p in ([v] if isinstance(v, str) else v)}
    assert listed == expected
    assert sum(p.endswith(".benchmark.tsv") for p in listed) == len(runs) * (4 * ITERS - 1)
    assert not any("final" in p for p in listed)
    assert re.search(r"rule buffer_update:\n(.*\n)*?\s+wildcards: run=sp_opgrpo, iter=00001", res.stdout)
    assert "rule report:" not in res.stdout


def test_a_missing_or_broken_benchmark_file_is_named(tmp_path):
    from opgrpo_stages.formats.benchmark import seconds

    good = tmp_path / "ok.benchmark.tsv"
    good.write_text("s\th:m:s\tmax_rss\n1.25\t0:00:01\t10\n")
    assert seconds(good) == 1.25
    bad = tmp_path / "bad.benchmark.tsv"
    bad.write_text("")
    for p in (bad, tmp_path / "missing.benchmark.tsv"):
        with pytest.raises(ValueError, match=re.escape(str(p))):
            seconds(p)
