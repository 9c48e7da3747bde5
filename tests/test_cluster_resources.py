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
