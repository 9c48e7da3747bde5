"""Data parallel stages: ``rollout`` and ``policy_update`` on 2 resident CPU ranks (gloo; this test
process is rank 0, ``opgrpo_stages/execution/ranks.py`` starts the other) write the same files as one
process, each rank reads only its rows, and the Snakefile runs them on one process per rank.

Rollout outputs are compared byte for byte: every sample has its own generator and each
process runs whole forward batches of the 1-process run (the tiny UNet's output for a sample
does change by ~1e-6 with the batch it is in, so this alignment is what makes it exact). The
update sums per-process gradients of whole microbatches, so policy and optimizer tensors match
the 1-process update up to float summation order: ``torch.allclose`` with ``UPDATE_TOL``
(observed: max abs difference ~1e-7 on the policy, ~1e-9 on the Adam moments).
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
UPDATE_TOL = dict(rtol=1e-5, atol=1e-6)  # float32 summation order of the all-reduced gradients
ROLLOUT_FILES = ("out_trajectories", "out_samples", "out_images")
UPDATE_FILES = ("out_policy", "out_optimizer", "out_metrics")


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _cfg(tmp, **over):
    """Uneven splits on purpose: 12 samples in 4 forward batches of 3 (a group straddles the two
    processes), minibatches of 6 in 3 microbatches of 2, and OP-GRPO replay so replayed groups
    (kept steps, sequence weights) are shared out too."""
    from opgrpo_stages import config as C

    base = dict(train={"prompts_per_iteration": 3, "group_size": 4, "minibatches": 2, "microbatch": 2},
                sampling={"batch_size": 3}, replay={"fraction": 0.5, "truncation": 2},
                distributed={"processes": 2})
    cfg_all = tiny_config(**C.deep_merge(base, over))
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg_all))
    return cfg_all, C.resolve_run(cfg_all, "flowgrpo")


def _paths(wd, stage, k, out_dir=None):
    from opgrpo_stages import layout as L

    paths = {n: (str(wd / p) if isinstance(p, str) else tuple(str(wd / q) for q in p))
             for n, p in L.stage_paths(stage, "flowgrpo", k).items()}
    if out_dir is not None:
        for n in paths:
            if n.startswith("out_"):
                paths[n] = str(out_dir / Path(paths[n]).name)
    return paths


def _in_process(cfg, wd, upto):
    """Prompts, init and full iterations 0..upto-1 in this process, the 1-process reference."""
    from opgrpo_stages.stages.buffer_update import buffer_update
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.policy_update import policy_update
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout
    from opgrpo_stages.stages.score import score

    make_prompts(cfg, "train", str(wd / "runs/prompts/train.jsonl"))
    init_policy(cfg, **_paths(wd, "init_policy", -1))
    for k in range(upto):
        for stage in (rollout, score, buffer_update, policy_update):
            stage(cfg, k, **_paths(wd, stage.__name__, k))


@pytest.fixture(scope="module")
def iteration1(tmp_path_factory):
    """Iteration 1 (with a non-empty buffer) computed in-process: the reference files."""
    wd = tmp_path_factory.mktemp("dp")
    _cfg_all, cfg = _cfg(wd)
    _in_process(cfg, wd, upto=2)
    return wd, cfg


@pytest.fixture(scope="module", autouse=True)
def _stop_ranks():
    yield
    from opgrpo_stages.execution import ranks

    ranks.shutdown()


def _launch(stage, cfg, k, paths, log):
    """``stage`` on the 2 resident ranks (rank 0: this process); returns {rank: pid} from its logs."""
    import re

    from opgrpo_stages.execution import ranks
    from opgrpo_stages.stages.policy_update import policy_update
    from opgrpo_stages.stages.rollout import rollout

    ranks.run(stage, {"rollout": rollout, "policy_update": policy_update}[stage], cfg, k, paths, log)
    text = Path(log).read_text()
    pids = {int(r): int(p) for r, p in re.findall(r"data parallel: rank (\d) of 2 pid (\d+)", text)}
    assert sorted(pids) == [0, 1] and pids[0] == os.getpid(), text[-3000:]
    worker = Path(f"{log}.rank1").read_text()
    assert f"worker pid {pids[1]}" in worker and "data parallel: rank 1 of 2" in worker, worker[-3000:]
    return pids


def test_rollout_two_processes_byte_identical(iteration1, tmp_path):
    from opgrpo_stages.formats import tables

    wd, cfg = iteration1
    samples = tables.read(wd / "runs/flowgrpo/iter_00001/samples.parquet", "samples")
    assert (samples["source"] == "replay").any(), "the check needs a replayed group"
    assert samples["group"].nunique() == 3
    ref = _paths(wd, "rollout", 1)
    out = _paths(wd, "rollout", 1, out_dir=tmp_path)
    pids = _launch("rollout", cfg, 1, out, tmp_path / "rollout.log")
    for name in ROLLOUT_FILES:
        assert _sha(out[name]) == _sha(ref[name]), name
    # the ranks are resident: the next stage runs on the same processes
    assert _launch("rollout", cfg, 1, out, tmp_path / "rollout2.log") == pids


def test_policy_update_two_processes_matches_one(iteration1, tmp_path):
    import numpy as np
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    wd, cfg = iteration1
    ref = _paths(wd, "policy_update", 1)
    out = _paths(wd, "policy_update", 1, out_dir=tmp_path)
    _launch("policy_update", cfg, 1, out, tmp_path / "update.log")
    # each rank read only its own samples' rows: together every trained sample, once
    import re

    reads = [re.search(r"rank (\d) of 2 reads the latents and embeddings of (\d+) of (\d+) samples", Path(f).read_text())
             for f in (tmp_path / "update.log", f"{tmp_path / 'update.log'}.rank1")]
    assert all(reads), reads
    n = int(reads[0].group(3))
    trained = int(pd.read_parquet(ref["out_metrics"])["samples_trained"].iloc[0])
    mine = [int(m.group(2)) for m in reads]
    assert sum(mine) == trained and max(mine) < n, (mine, trained, n)
    before = load_file(ref["policy_path"])
    for name in ("out_policy", "out_optimizer"):
        a, b = load_file(ref[name]), load_file(out[name])
        assert a.keys() == b.keys() and a
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{name}: max |1-process - 2-process| = {worst:.3g}")
        for k in a:
            assert torch.allclose(a[k], b[k], **UPDATE_TOL), (name, k)
    # the update moved the weights by far more than the tolerance: the comparison is not vacuous
    moved = max(float((load_file(ref["out_policy"])[k] - before[k]).abs().max()) for k in before)
    assert moved > 100 * UPDATE_TOL["atol"]
    ma, mb = pd.read_parquet(ref["out_metrics"]), pd.read_parquet(out["out_metrics"])
    assert list(ma.columns) == list(mb.columns)
    assert np.allclose(ma.to_numpy(float), mb.to_numpy(float), rtol=1e-5, atol=1e-7, equal_nan=True)
    for col in ("clipfrac", "approx_kl", "n_replay", "weight_mean", "optimizer_steps"):
        assert ma[col].iloc[0] == pytest.approx(mb[col].iloc[0], rel=1e-6, abs=1e-9), col


def test_shards_partition_the_items_in_order():
    from opgrpo_stages.execution.collectives import DataParallel

    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            blocks = [DataParallel(r, world).shard(n) for r in range(world)]
            assert [i for b in blocks for i in range(n)[b]] == list(range(n))
            sizes = [b.stop - b.start for b in blocks]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_processes_beyond_forward_batches_is_a_config_error():
    from opgrpo_stages import config as C
    from opgrpo_stages.errors import ConfigError

    cfg = tiny_config(distributed={"processes": 3}, sampling={"batch_size": 4})  # 8 samples: 2 batches
    with pytest.raises(ConfigError, match="'distributed.processes' = 3 exceeds the 2 rollout forward batches"):
        C.resolve_run(cfg, "flowgrpo")
    C.resolve_run(tiny_config(distributed={"processes": 2}, sampling={"batch_size": 4}), "flowgrpo")


def _smk(wd, *args):
    cmd = [sys.executable, "-m", "snakemake", *args, "-s", str(REPO / "Snakefile"), "-d", str(wd),
           "--configfile", str(wd / "config.yaml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_snakefile_runs_stages_on_resident_ranks(tmp_path):
    """The rules run rollout and policy_update on 2 ranks, one process per rank for the whole
    Snakemake run; iteration 0's files equal an in-process run of the same stages."""
    import re

    import torch
    from safetensors.torch import load_file

    _cfg_all, cfg = _cfg(tmp_path)
    target = "runs/flowgrpo/iter_00000/policy.safetensors"
    res = _smk(tmp_path, target, "--cores", "2", "--force-use-threads")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    pids = {}
    for stage in ("rollout", "policy_update"):
        log = tmp_path / f"logs/flowgrpo/iter_00000/{stage}.log"
        for r in (0, 1):
            text = Path(f"{log}.rank1").read_text() if r else log.read_text()
            pids.setdefault(r, set()).update(re.findall(r"worker pid (\d+)", text))
        assert "data parallel: rank 1 of 2 pid" in log.read_text()
    assert all(len(p) == 1 for p in pids.values()) and pids[0] != pids[1], pids
    ref = tmp_path / "ref"
    ref.mkdir()
    from opgrpo_stages.stages.policy_update import policy_update
    from opgrpo_stages.stages.rollout import rollout

    rollout(cfg, 0, **{**_paths(tmp_path, "rollout", 0), **{n: str(ref / Path(p).name) for n, p in
                                                            _paths(tmp_path, "rollout", 0).items() if n.startswith("out_")}})
    for name in ROLLOUT_FILES:
        got = _paths(tmp_path, "rollout", 0)[name]
        assert _sha(got) == _sha(ref / Path(got).name), name
    ref_up = _paths(tmp_path, "policy_update", 0, out_dir=ref)
    policy_update(cfg, 0, **ref_up)
    a, b = load_file(ref_up["out_policy"]), load_file(tmp_path / target)
    assert all(torch.allclose(a[k], b[k], **UPDATE_TOL) for k in a)


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="the slurm extra is not installed")
@pytest.mark.parametrize("nodes", [1, 2])
def test_slurm_profile_requests_one_gpu_per_process(tmp_path, nodes):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({"distributed": {"processes": 2, "nodes": nodes},
                                                        "sampling": {"batch_size": 8}}))  # >= 4 batches in every run
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--profile",
           str(REPO / "profiles/slurm"), "-n", "--configfile", str(tmp_path / "config.yaml"), str(tmp_path / "more.yaml")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    per_rank = ("gpu=2",) if nodes == 1 else ("gpu=0", "nodes=2", "gres=gpu:2")  # gres: per node
    for rule, want in (("rollout", per_rank), ("policy_update", per_rank), ("evaluate", per_rank),
                       ("evaluate_base", ("gpu=1",))):  # the base model's one evaluation: one GPU
        block = out.split(f"rule {rule}:")[1].split("\n\n")[0]
        assert all(w in block for w in want), block


def test_trajectories_read_rows_reads_only_those_rows(tmp_path):
    """A rank's read: the latents of its rows (any order, repeats) and nothing else of that tensor;
    the other tensors whole; a row past the file's end is an error naming the file."""
    import torch

    from opgrpo_stages.errors import ArtifactError
    from opgrpo_stages.formats import trajectories as T

    n, s = 7, 3
    g = torch.Generator().manual_seed(0)
    traj = T.Trajectories(torch.randn(n, s + 1, 2, 4, 4, generator=g), torch.linspace(1, 0, s + 1),
                          torch.randn(n, s, generator=g), torch.randn(n, s, generator=g),
                          torch.rand(n, s, generator=g) > 0.3, {"run": "r", "iteration": 0})
    path = tmp_path / "trajectories.safetensors"
    T.write(path, traj)
    part = T.read(path, rows=[5, 1, 2, 1])
    assert part.latent_rows.tolist() == [1, 2, 5]
    assert torch.equal(part.latents, traj.latents[[1, 2, 5]])
    for name in ("sigmas", "logp_old", "logp_behavior", "train_steps"):
        assert torch.equal(getattr(part, name), getattr(traj, name)), name
    assert part.num_samples == n and part.num_steps == s
    none = T.read(path, rows=())
    assert none.latents.shape == (0, s + 1, 2, 4, 4) and none.num_samples == n
    assert T.read(path).latent_rows is None and torch.equal(T.read(path).latents, traj.latents)
    with pytest.raises(ArtifactError, match=r"trajectories.safetensors: .*latents' has 7 rows, row 7 asked"):
        T.read(path, rows=[7])


def test_a_dead_rank_fails_the_stage_and_the_next_stage_starts_fresh_ranks(iteration1, tmp_path):
    """Rank 1 killed between stages (a node lost): the next data-parallel stage fails with an error
    naming its logs, writes nothing, and does not hang; the stage after that gets new ranks."""
    import signal
    import time

    from opgrpo_stages.execution import ranks
    from opgrpo_stages.stages.rollout import rollout

    wd, cfg = iteration1
    out = _paths(wd, "rollout", 1, out_dir=tmp_path)
    (_r, dead, _where) = ranks.pool_for(cfg).ranks[1]
    os.kill(dead, signal.SIGKILL)
    time.sleep(1)
    with pytest.raises(ranks.RankError, match=r"rollout of run flowgrpo iteration 1 on 2 ranks failed: .*rollout\.log"):
        ranks.run("rollout", rollout, cfg, 1, out, tmp_path / "rollout.log")
    assert not any(Path(out[n]).exists() for n in ROLLOUT_FILES)
    pids = _launch("rollout", cfg, 1, out, tmp_path / "again.log")
    assert pids[1] != dead
    ref = _paths(wd, "rollout", 1)
    assert all(_sha(out[n]) == _sha(ref[n]) for n in ROLLOUT_FILES)
