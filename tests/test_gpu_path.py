"""Issue 22: what would fail on the first GPU cluster run, as data (no GPU, no live Slurm needed).

Reward devices (item 1): every model a reward builds gets ``runtime.device``; a CPU reward model on a
GPU run is refused unless ``reward.allow_cpu`` lists it; the paper preset scores through GenEval's
evaluator server."""

from pathlib import Path

import pytest
import yaml

from opgrpo_stages import config as C
from opgrpo_stages.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _gpu_cfg(options, terms=None, allow_cpu=None):
    from conftest import tiny_config

    reward = {"terms": terms or {name: 1.0 for name in options}, "options": options}
    if allow_cpu is not None:
        reward["allow_cpu"] = allow_cpu
    cfg = tiny_config(reward=reward, runtime={"device": "cuda"})
    cfg["reward"]["terms"] = reward["terms"]  # deep_merge keeps tiny_config's terms otherwise
    return C.resolve_run(cfg, "flowgrpo")


@pytest.fixture
def captured(monkeypatch):
    """GenEval's model backends replaced by recorders of the kwargs they are built with."""
    from opgrpo_stages.rewards import geneval as G

    got = {}
    monkeypatch.setattr(G, "build_detector", lambda name, **kw: got.setdefault("detector", (name, kw)))
    monkeypatch.setattr(G, "build_color_classifier", lambda name, **kw: got.setdefault("color", (name, kw)))
    return got


GENEVAL_MODELS = {"detector": "mask2former", "detector_kwargs": {"checkpoint": "x.pth"}, "color_classifier": "clip",
                  "color_classifier_kwargs": {"path": "clip"}}


def test_geneval_models_are_built_on_the_runtime_device(captured):
    from opgrpo_stages.stages.score import build_term

    build_term(_gpu_cfg({"geneval": GENEVAL_MODELS}), "geneval")
    assert captured["detector"][1]["device"] == "cuda"
    assert captured["color"][1]["device"] == "cuda"


def test_geneval_model_kwargs_keep_their_own_device(captured):
    from opgrpo_stages.stages.score import build_term

    opts = {**GENEVAL_MODELS, "detector_kwargs": {"checkpoint": "x.pth", "device": "cuda:1"}}
    build_term(_gpu_cfg({"geneval": opts}), "geneval")
    assert captured["detector"][1]["device"] == "cuda:1" and captured["color"][1]["device"] == "cuda"


def test_cpu_reward_model_on_a_gpu_run_is_refused_naming_the_key(captured):
    from opgrpo_stages.stages.score import build_terms

    opts = {**GENEVAL_MODELS, "color_classifier_kwargs": {"path": "clip", "device": "cpu"}}
    with pytest.raises(ConfigError, match=r"reward\.options\.geneval\.color_classifier_kwargs\.device.*reward\.allow_cpu"):
        build_terms(_gpu_cfg({"geneval": opts}))
    assert not captured  # refused before any model is built
    build_terms(_gpu_cfg({"geneval": opts}, allow_cpu=["geneval"]))  # the documented way to accept it
    assert captured["color"][1]["device"] == "cpu"


def test_ocr_on_a_gpu_run_needs_allow_cpu_and_refuses_device_cuda():
    from opgrpo_stages.rewards import check_devices
    from opgrpo_stages.rewards.ocr import OcrReward

    with pytest.raises(ConfigError, match="reward.allow_cpu"):
        check_devices(_gpu_cfg({"ocr": {}}))
    check_devices(_gpu_cfg({"ocr": {}}, allow_cpu=["ocr"]))
    with pytest.raises(ConfigError, match=r"reward\.options\.ocr\.device = 'cuda'.*CPU only"):
        OcrReward(device="cuda")


def test_rewards_without_a_model_and_cpu_runs_pass():
    from opgrpo_stages.rewards import check_devices

    check_devices(_gpu_cfg({"geneval": {}, "brightness": {}}))  # embedded detector: rules, no model
    from conftest import tiny_config

    cfg = C.resolve_run(tiny_config(reward={"terms": {"ocr": 1.0}}), "flowgrpo")
    check_devices(cfg)  # runtime.device cpu


@pytest.mark.parametrize("name", ["sd35_geneval.yaml", "sd35_ocr.yaml", "sd35_pickscore.yaml", "wan21_ocr.yaml"])
def test_presets_put_no_reward_model_on_the_cpu_unawares(name):
    from opgrpo_stages.rewards import check_devices

    cfg = C.load(REPO / "presets" / name)
    for run in cfg["runs"]:
        check_devices(C.resolve_run(cfg, run, name))


def test_geneval_preset_scores_through_the_evaluator_server():
    cfg = yaml.safe_load((REPO / "presets/sd35_geneval.yaml").read_text())
    assert cfg["reward"]["options"]["geneval"]["server"]["url"]


# -- host memory, CPUs and nodes per rank (items 2, 3, 5, 7) --------------------------------------

def _preset(path="presets/sd35_geneval.yaml", **over):
    cfg = C.deep_merge(yaml.safe_load((REPO / path).read_text()), over)
    return C.resolve_run(cfg, "flowgrpo", path)


def test_host_memory_grows_with_the_ranks_of_a_node():
    from opgrpo_stages.execution import cluster

    one, eight = _preset(), _preset(distributed={"processes": 8})
    host = one["cluster"]["host_mem_gb"] * 1024
    for stage in ("rollout", "score", "policy_update", "evaluate"):
        assert cluster.mem_mb(eight, stage) >= 8 * host > cluster.mem_mb(one, stage), stage
    assert cluster.mem_mb(eight, "buffer_update") == cluster.mem_mb(one, "buffer_update")  # rank 0 alone


def test_data_parallel_jobs_ask_cpus_per_rank_and_one_node():
    from opgrpo_stages.execution import cluster

    eight = _preset(distributed={"processes": 8}, cluster={"cpus_per_rank": 12})
    w = type("W", (), {"run": "flowgrpo"})()
    res = cluster.rule_resources("policy_update", lambda run: eight, multi_node=False, data_parallel=True)
    got = {k: (v(w) if callable(v) else v) for k, v in res.items()}
    assert got["cpus_per_task"] == 96 and got["gpu"] == 8 and got["nodes"] == 1
    # buffer_update runs beside policy_update in the job: the group job sums parallel stages' CPUs
    assert cluster.cpus_per_task(eight, "buffer_update") == 0


def test_multi_node_gres_carries_the_gpu_model_and_clears_the_plugins():
    from opgrpo_stages.execution import cluster

    cfg = _preset(distributed={"nodes": 4, "processes": 8}, cluster={"gpu_model": "h100"})
    w = type("W", (), {"run": "flowgrpo"})()
    for stage, dp in (("rollout", True), ("buffer_update", False)):
        res = cluster.rule_resources(stage, lambda run: cfg, multi_node=True, data_parallel=dp)
        got = {k: (v(w) if callable(v) else v) for k, v in res.items()}
        assert got["gres"] == "gpu:h100:8" and got["gpu_model"] == "", stage


def test_multi_node_submission_has_no_contradictory_gpus_flag():
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm.utils")
    from types import SimpleNamespace

    class Res(dict):
        __getattr__ = dict.get

    job = SimpleNamespace(resources=Res(gres="gpu:h100:8", gpu=0, gpu_model="", nodes=4))
    assert plugin.set_gres_string(job).strip() == "--gres=gpu:h100:8"


def test_rank_step_shares_the_nodes_cpus_and_survives_waittime():
    from opgrpo_stages.execution.ranks import job_cpus_per_node, rank_step_command

    assert job_cpus_per_node({"SLURM_JOB_CPUS_PER_NODE": "96(x4)"}) == 96
    assert job_cpus_per_node({"SLURM_JOB_CPUS_PER_NODE": "64(x2),32"}) == 32
    assert job_cpus_per_node({"SLURM_CPUS_ON_NODE": "16"}) == 16 and job_cpus_per_node({}) is None
    cmd = rank_step_command("42", 4, 32, 8, 96, ["python", "-m", "x"])
    assert "--cpus-per-task=12" in cmd and "--wait=0" in cmd and "--nodes=4" in cmd and "--ntasks-per-node=8" in cmd
    assert cmd[-1] == "--from-slurm" and cmd[-4:-1] == ["python", "-m", "x"]


def test_torch_threads_follow_the_cpu_affinity(monkeypatch):
    import os

    import torch

    from conftest import tiny_config
    from opgrpo_stages.stages.common import setup_torch

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    try:
        setup_torch(C.resolve_run(tiny_config(runtime={"torch_threads": 8}), "flowgrpo"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ranks_of_a_pool_load_weights_one_at_a_time(monkeypatch):
    import threading

    from opgrpo_stages.execution import one_load_at_a_time

    monkeypatch.setenv("OPGRPO_POOL", "test-pool-lock")
    first_in, release, second_in = threading.Event(), threading.Event(), threading.Event()

    def first():
        with one_load_at_a_time():
            first_in.set()
            release.wait(30)

    def second():
        first_in.wait(30)
        with one_load_at_a_time():
            second_in.set()

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start(), b.start()
    assert first_in.wait(30)
    assert not second_in.wait(0.5)  # the second build waits while the first holds the node's lock
    release.set()
    assert second_in.wait(30)
    a.join(), b.join()


def test_score_reads_only_its_ranks_image_rows(tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd

    from conftest import tiny_config
    from opgrpo_stages.execution.collectives import DataParallel
    from opgrpo_stages.formats import header, images as images_fmt, tables
    from opgrpo_stages.stages import score as S

    cfg = C.resolve_run(tiny_config(reward={"terms": {"brightness": 1.0}, "batch_size": 2}), "flowgrpo")
    cfg["reward"]["terms"] = {"brightness": 1.0}
    n = 8
    images_fmt.write(tmp_path / "images.safetensors", np.zeros((n, 4, 4, 3), np.uint8), header.of(cfg, 0))
    df = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "prompt_id": "p", "prompt": "a red cube",
                       "metadata": "{}", "tag": "t", "group": 0, "source": "fresh", "birth_iteration": 0, "kept_steps": 0})
    tables.write(tmp_path / "samples.parquet", df, "samples", header.of(cfg, 0))
    seen = []
    real = images_fmt.read
    monkeypatch.setattr(images_fmt, "read", lambda *a, **k: seen.append(len(real(*a, **k))) or real(*a, **k))

    class Rank1(DataParallel):
        def gather_cat(self, *parts):
            return (None,) * len(parts)

    S._score(cfg, 0, Rank1(1, 2), images_path=tmp_path / "images.safetensors",
             samples_path=tmp_path / "samples.parquet", out_rewards=tmp_path / "rewards.parquet")
    assert seen == [4]  # rank 1 of 2: rows 4..7 only


def test_a_gpu_launcher_without_opgrpo_ranks_device_fails_at_once(monkeypatch):
    from opgrpo_stages.execution import ranks

    monkeypatch.setenv(ranks.RANK0_ENV, "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("OPGRPO_RANKS_DEVICE", raising=False)

    def no_rendezvous(*a, **k):  # the old code would wait here (up to 7 days)
        raise AssertionError("joined the rendezvous")

    monkeypatch.setattr(ranks, "_init_group", no_rendezvous)
    with pytest.raises(ConfigError, match="OPGRPO_RANKS_DEVICE=cuda"):
        ranks.Pool(2, "cuda", 1, 2).start()


def test_nccl_group_is_bounded_and_cublas_configured_before_cuda_starts(monkeypatch):
    import torch
    import torch.distributed as dist

    from opgrpo_stages.execution import ranks

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: seen.setdefault("cublas", __import__("os").environ.get(
        "CUBLAS_WORKSPACE_CONFIG")))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **k: seen.update(backend=backend, timeout=k["timeout"]))
    monkeypatch.setattr(dist, "new_group", lambda **k: seen.update(objects=k["timeout"]))
    ranks._init_group(0, 2, "cuda", "tcp://127.0.0.1:1")
    assert seen["cublas"] == ":4096:8" and seen["backend"] == "nccl"
    assert seen["timeout"] <= ranks.STEP_TIMEOUT < seen["objects"]  # the idle gloo group keeps its long one


# -- Snakemake versions and patches (item 6) ------------------------------------------------------

def test_snakemake_outside_the_tested_window_fails_with_one_line_naming_the_versions(monkeypatch):
    from opgrpo_stages.execution import snakemake_patches as P

    monkeypatch.delenv(P.ALLOW_UNTESTED, raising=False)
    for versions in ({"snakemake": "9.28.0", "snakemake-executor-plugin-slurm": "2.8.0"},
                     {"snakemake": "9.27.1", "snakemake-executor-plugin-slurm": "1.0.0"},
                     {"snakemake": "9.19.0", "snakemake-executor-plugin-slurm": None}):
        with pytest.raises(P.PatchError) as err:
            P.verify(versions)
        msg = str(err.value)
        assert "\n" not in msg and "snakemake >=9.20,<9.28" in msg and "plugin-slurm >=2.8,<2.9" in msg
        assert next(f"{p} {v}" for p, v in versions.items() if v) in msg
    P.verify()  # what this environment has is inside the window


def test_pyproject_pins_the_window_verify_checks():
    import tomllib

    from opgrpo_stages.execution.snakemake_patches import TESTED

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = deps["dependencies"] + deps["optional-dependencies"]["slurm"]
    for pkg, (lo, hi) in TESTED.items():
        assert f"{pkg}>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}" in pins, pkg


def test_a_snakemake_whose_executor_stopped_reading_use_threads_is_refused(monkeypatch):
    from snakemake.executors import local

    from opgrpo_stages.execution import snakemake_patches as P

    monkeypatch.setattr(local.Executor, "run_single_job", lambda self, job: None)
    with pytest.raises(P.PatchError, match="use_threads"):
        P.verify()


def test_the_threads_patch_sets_use_threads_on_a_new_local_executor(monkeypatch):
    from types import SimpleNamespace

    from snakemake.executors import local

    from opgrpo_stages.execution import snakemake_patches as P

    monkeypatch.setattr(local.Executor, "__post_init__", local.Executor.__post_init__)  # restored after
    monkeypatch.delattr(local.Executor, "_opgrpo_threads", raising=False)
    P.run_group_stages_in_threads()
    ex = local.Executor.__new__(local.Executor)
    ex.workflow = SimpleNamespace(execution_settings=SimpleNamespace(use_threads=False, keep_incomplete=False),
                                  resource_settings=SimpleNamespace(cores=1))
    ex.__post_init__()
    ex.pool.shutdown()
    assert ex.use_threads is True
    monkeypatch.delattr(local.Executor, "_opgrpo_threads")


def test_the_group_check_patch_replaces_both_quadratic_checks(monkeypatch):
    from snakemake.dag import DAG

    from opgrpo_stages.execution import snakemake_patches as P

    for name in ("_check_groups", "validate_group", "_opgrpo_linear_groups"):
        monkeypatch.setattr(DAG, name, getattr(DAG, name, False), raising=False)  # restored after
    DAG._opgrpo_linear_groups = False
    P.install()
    assert DAG._check_groups is P.check_groups and DAG.validate_group(None, None) is None
    monkeypatch.delattr(DAG, "_check_groups")
    DAG._opgrpo_linear_groups = False
    with pytest.raises(P.PatchError):
        P.install()


def test_allow_cpu_reruns_nothing():
    """A new key with a default must not change what finished stages recorded (rerun trigger)."""
    from conftest import tiny_config

    plain = C.resolve_run(tiny_config(), "flowgrpo")
    allowed = C.resolve_run(tiny_config(reward={"allow_cpu": ["geneval"]}), "flowgrpo")
    del plain["reward"]["allow_cpu"]  # as a config written before the key existed records it
    for stage in ("score", "policy_update", "evaluate"):
        assert C.stage_params(plain, stage) == C.stage_params(allowed, stage), stage
