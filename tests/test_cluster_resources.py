"""Slurm resources derived from the config (opgrpo_stages/execution/cluster.py) and the presets' job sizes."""

import glob
import math

import pytest
import yaml

from opgrpo_stages.execution import cluster
from opgrpo_stages import config as C

PRESETS = sorted(glob.glob("presets/*.yaml"))
TRAIN = ("rollout", "score", "buffer_update", "policy_update")


def _run_cfg(path, **cluster_over):
    cfg = yaml.safe_load(open(path))
    cfg["cluster"] = {**cfg.get("cluster", {}), **cluster_over}
    return C.resolve_run(cfg, list(cfg["runs"])[0], path)


def test_sd35_iteration_flops_match_the_counted_figures():
    """Issue 11: 4.45 TFLOP per guided forward, 9.54 forward+backward (LoRA), 2.5 per decode give
    ~173 TFLOP per training sample and ~199 PFLOP per iteration (48 x 24, 10 steps, 9 trained, KL)."""
    r = _run_cfg("presets/sd35_geneval.yaml", tflops=1.0, overhead_s=0.0)
    per_sample = 10 * 4.45 + 2.5 + 9 * (9.54 + 4.45)
    assert per_sample == pytest.approx(173, abs=0.5)
    got = cluster.expected_seconds(r, "rollout") + cluster.expected_seconds(r, "policy_update")
    assert got == pytest.approx(48 * 24 * per_sample, rel=1e-9)  # TFLOP at 1 TFLOP/s
    assert got / 1000 == pytest.approx(199, abs=1)


@pytest.mark.parametrize("path", PRESETS)
def test_preset_jobs_last_1_to_4_hours_and_ask_at_most_about_twice(path):
    r = _run_cfg(path)
    k = r["cluster"]["iterations_per_job"]
    expected = k * cluster.iteration_seconds(r) + cluster.expected_seconds(r, "init_policy")
    # Snakemake sums the runtimes of a group job's stages into the job's time limit
    walltime = 60 * (k * sum(cluster.runtime_minutes(r, s) for s in TRAIN) + cluster.runtime_minutes(r, "init_policy"))
    assert 3600 <= expected <= 4 * 3600
    assert expected < walltime <= 2.25 * expected
    # evaluation is its own job, also sized from the config
    ev = cluster.expected_seconds(r, "evaluate")
    assert ev > cluster.expected_seconds(r, "score") and cluster.runtime_minutes(r, "evaluate") >= 2 * ev / 60


@pytest.mark.parametrize("path", PRESETS)
def test_presets_prune_storage_by_default(path):
    r = _run_cfg(path)
    assert r["storage"]["prune"] and r["storage"]["prune_states"]


def test_runtime_scales_with_throughput_and_samples():
    r = _run_cfg("presets/sd35_geneval.yaml", overhead_s=0.0)
    fast = _run_cfg("presets/sd35_geneval.yaml", overhead_s=0.0, tflops=600)
    assert cluster.expected_seconds(fast, "rollout") == pytest.approx(cluster.expected_seconds(r, "rollout") / 2)
    big = C.deep_merge(r, {"train": {"group_size": 48}})
    assert cluster.expected_seconds(big, "policy_update") == pytest.approx(2 * cluster.expected_seconds(r, "policy_update"))
    assert math.isclose(cluster.mem_mb(r, "evaluate"), r["cluster"]["host_mem_gb"] * 1024)
    # trajectories (1152 x 11 x 16x64x64 float32) and images (1152 x 512x512x3), twice
    held = 1152 * 11 * 16 * 64 * 64 * 4 + 1152 * 512 * 512 * 3
    assert cluster.mem_mb(r, "rollout") == int(r["cluster"]["host_mem_gb"] * 1024 + 2 * held / 2**20)


def test_final_evaluation_runtime_is_derived_from_what_it_samples_and_scores():
    """Issue 22: final_eval had the profile's fixed 60 minutes. On the paper preset with Table 2's
    models configured it samples 8 x 300 x 10 T2I-CompBench++ images plus the held-out images again
    (40 ODE steps each) on one GPU: hours; with no metric configured it samples nothing."""
    r = _run_cfg("presets/sd35_geneval.yaml")
    r["reward"]["options"]["t2i_compbench"] = {"server": {"url": "http://x:1"}}
    assert cluster.t2i_compbench_images(r) == 8 * 300 * 10
    per_image = 40 * 4.45 + 2.5
    metrics = len(r["eval"]["metrics"])
    m = cluster.heldout_images(r)  # 553 x 4
    want = 60 + (m + 24000) * per_image / 300 + (metrics * m + 24000) * 0.05
    assert cluster.expected_seconds(r, "final_eval") == pytest.approx(want)
    assert cluster.runtime_minutes(r, "final_eval") == math.ceil(2 * want / 60) > 4 * 60
    assert cluster.expected_seconds(r, "final_eval_base") == cluster.expected_seconds(r, "final_eval")
    few = C.deep_merge(r, {"eval": {"metrics": [], "t2i_compbench": {"prompts_per_category": 5, "categories": ["color"]}}})
    assert cluster.t2i_compbench_images(few) == 50
    none = C.deep_merge(r, {"eval": {"metrics": [], "t2i_compbench": {"categories": []}}})
    assert cluster.expected_seconds(none, "final_eval") == r["cluster"]["overhead_s"]
    # the base model's held-out evaluation runs on one GPU whatever distributed says
    eight = C.deep_merge(r, {"distributed": {"processes": 8}})
    assert cluster.expected_seconds(eight, "evaluate_base") == cluster.expected_seconds(r, "evaluate") \
        > cluster.expected_seconds(eight, "evaluate")


def test_snakefile_asks_the_derived_runtime_for_the_final_evaluations(tmp_path):
    """The dry run's resources of final_eval, final_eval_base and evaluate_base are cluster.py's
    (before: none of their own, so the profile's fixed 60 minutes)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    over = {"reward": {"options": {"t2i_compbench": {"server": {"url": "http://x:1"}}}},
            "cluster": {"reward_s_per_image": 0.2}}
    (tmp_path / "over.yaml").write_text(yaml.safe_dump(over))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(repo / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(repo / "config.yaml"), str(tmp_path / "over.yaml"), "--cores", "1",
                          "runs/base/final.parquet", "runs/flowgrpo/final/best.parquet"],
                         capture_output=True, text=True, timeout=300, cwd=repo)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    cfg = C.deep_merge(yaml.safe_load((repo / "config.yaml").read_text()), over)
    r = C.resolve_run(cfg, "flowgrpo")
    got = dict(re.findall(r"rule (\w+):(?:(?!\n    rule ).)*?resources: [^\n]*runtime=(\d+)", res.stdout, re.S))
    for rule in ("final_eval", "final_eval_base", "evaluate_base"):
        assert int(got[rule]) == cluster.runtime_minutes(r, rule), (rule, got)
    assert int(got["final_eval"]) > 60
