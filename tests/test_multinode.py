"""Data parallel across two "machines": a 2-iteration OP-GRPO experiment with one rank per node,
(a) through ``snakemake --profile profiles/slurm`` on the two-node local Slurm (marked ``slurm``;
tests/slurm/local_slurm.sh: nodes n1, n2 on this host) and (b) under torchrun with
``--nnodes 2`` on loopback, rank 0 running Snakemake with profiles/local. Both write artifacts
byte-identical to each other, and equal to the one-process local run: iteration 0's rollout
files byte for byte, every policy and optimizer state within ``UPDATE_TOL`` (the 2-rank update
sums gradients in another order; iteration 1 then samples with that slightly different policy,
so its rollout is compared within a tolerance too). Every data-parallel stage of the job ran on
one process per rank (pids in the stage logs), rank 1 on the second node."""

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from test_distributed import UPDATE_TOL
from test_slurm import LIMIT_S, _slurm_profile, slurm  # noqa: F401  (the module-scoped cluster fixture)

REPO = Path(__file__).resolve().parents[1]
RUN = "opgrpo"
ITERATIONS = 2
TARGET = f"runs/{RUN}/iter_{ITERATIONS - 1:05d}/policy.safetensors"  # training only: no evaluation


def _experiment(wd, nodes):
    cfg = tiny_config(train={"iterations": ITERATIONS, "prompts_per_iteration": 2, "group_size": 4, "minibatches": 2,
                             "microbatch": 2},
                      sampling={"batch_size": 4}, distributed={"nodes": nodes, "processes": 1},
                      cluster={"iterations_per_job": ITERATIONS, "cpus_per_rank": 1})  # 2-CPU test nodes
    cfg["runs"] = {RUN: {"replay": {"fraction": 0.5, "truncation": 2}}}  # replayed groups are shared out too
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def _snakemake_args(wd, profile):
    return ["-s", str(REPO / "Snakefile"), "-d", str(wd), "--configfile", str(wd / "config.yaml"),
            "--profile", str(profile), TARGET]


def _files(wd):
    return {str(p.relative_to(wd)): p for p in sorted((wd / "runs").rglob("*"))
            if p.suffix in (".parquet", ".safetensors")}


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    wd = _experiment(tmp_path_factory.mktemp("one"), nodes=1)
    res = subprocess.run([sys.executable, "-m", "snakemake", *_snakemake_args(wd, REPO / "profiles/local")],
                         capture_output=True, text=True, timeout=LIMIT_S)
    assert res.returncode == 0, res.stderr[-5000:]
    return wd


@pytest.fixture(scope="module")
def two_ranks():
    """Artifacts of the two-rank runs, by launcher: each must equal the others byte for byte."""
    return {}


def _check_against_one_process(wd, ref, two_ranks, launcher):
    import torch
    from safetensors.torch import load_file

    got, want = _files(wd), _files(ref)
    assert got.keys() == want.keys() and len(got) >= 6 * ITERATIONS
    for name in ("trajectories", "samples", "images"):  # the same policy samples the same, byte for byte
        f = f"runs/{RUN}/iter_00000/{name}" + (".parquet" if name == "samples" else ".safetensors")
        assert _sha(got[f]) == _sha(want[f]), f
    for f in got:
        if f.endswith(".safetensors") and not f.endswith("images.safetensors"):
            a, b = load_file(got[f]), load_file(want[f])
            assert a.keys() == b.keys(), f
            for k in a:
                close = torch.allclose(a[k].float(), b[k].float(), **UPDATE_TOL) if a[k].dtype != torch.bool \
                    else torch.equal(a[k], b[k])
                assert close, (f, k, float((a[k].float() - b[k].float()).abs().max()))
    shas = {f: _sha(p) for f, p in got.items()}
    for other, theirs in two_ranks.items():  # the same 2-rank arithmetic whatever the launcher
        assert shas == theirs, f"{launcher} and {other} runs differ"
    two_ranks[launcher] = shas


def _rank_pids(wd):
    """{rank: {(pid, where)}} over every data-parallel stage log of the run."""
    out = {0: set(), 1: set()}
    for k in range(ITERATIONS):
        for stage in ("rollout", "policy_update"):
            text = (wd / f"logs/{RUN}/iter_{k:05d}/{stage}.log").read_text()
            for r, pid, where in re.findall(r"data parallel: rank (\d) of 2 pid (\d+) on (.+)", text):
                out[int(r)].add((int(pid), where.strip()))
            rank1 = (wd / f"logs/{RUN}/iter_{k:05d}/{stage}.log.rank1").read_text()
            assert re.search(r"worker pid (\d+)", rank1).group(1) in {str(p) for p, _ in out[1]}
    # resident: rank 1 built the backbone once for all the job's stages and iterations
    assert re.search(r"backbone_loads=(\d+)", rank1).group(1) == "1", rank1
    return out


def test_torchrun_two_machines_on_loopback(one_process, two_ranks, tmp_path):
    wd = _experiment(tmp_path / "wd", nodes=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for node_rank in (1, 0):
        cmd = ["timeout", "-k", "10", str(LIMIT_S), sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--node_rank", str(node_rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
               str(port), "-m", "opgrpo_stages.execution.ranks", "snakemake", *_snakemake_args(wd, REPO / "profiles/local")]
        log = open(tmp_path / f"node{node_rank}.out", "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONPATH": str(REPO)}), log))
    t0 = time.monotonic()
    rcs = [p.wait(timeout=LIMIT_S + 30) for p, _ in procs]
    print(f"torchrun 2 x 1: {time.monotonic() - t0:.0f} s")
    for node_rank, rc in zip((1, 0), rcs):
        assert rc == 0, (tmp_path / f"node{node_rank}.out").read_text()[-5000:]
    pids = _rank_pids(wd)
    assert len(pids[0]) == 1 and len(pids[1]) == 1 and pids[0] != pids[1], pids
    _check_against_one_process(wd, one_process, two_ranks, "torchrun")


@pytest.mark.slurm
def test_slurm_job_spans_two_nodes(slurm, one_process, two_ranks, tmp_path):  # noqa: F811
    wd = _experiment(tmp_path / "wd", nodes=2)
    profile = _slurm_profile(tmp_path / "profile")
    cmd = ["timeout", "-k", "10", str(LIMIT_S), sys.executable, "-m", "snakemake",
           *_snakemake_args(wd, profile)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=slurm, timeout=LIMIT_S + 60)
    print(f"snakemake --profile slurm, 2 nodes: {time.monotonic() - t0:.0f} s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    # one Slurm job for both iterations, on both nodes, one process per rank: rank 0 (the job's
    # Snakemake) on the first node, rank 1 on the second
    jobs = {re.search(r"SLURM job (\d+) on ", (wd / f"logs/{RUN}/iter_{k:05d}/{s}.log").read_text()).group(1)
            for k in range(ITERATIONS) for s in ("rollout", "policy_update")}
    assert len(jobs) == 1, jobs
    info = subprocess.run(["scontrol", "show", "job", *jobs], capture_output=True, text=True, env=slurm).stdout
    assert re.search(r"\bNumNodes=2\b", info), info
    # the submitted job carries one CPU per rank (cluster.cpus_per_rank) and memory for its ranks
    assert re.search(r"\bCPUs/Task=1\b", info), info
    assert int(re.search(r"\bMinMemoryNode=(\d+)M\b", info).group(1)) >= 1000, info
    # the strict test cluster (task/affinity, WaitTime): every rank is bound to its share of the node's
    # CPUs, and rank 1 keeps serving long after its step's task 0 exited (srun --wait=0)
    wait = int(re.search(r"WaitTime\s*=\s*(\d+)", subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, env=slurm).stdout).group(1))
    assert wait > 0, "the test cluster should set WaitTime (tests/slurm/local_slurm.sh)"
    stamps = []
    for k in range(ITERATIONS):
        for stage in ("rollout", "policy_update"):
            log0 = (wd / f"logs/{RUN}/iter_{k:05d}/{stage}.log").read_text()
            log1 = (wd / f"logs/{RUN}/iter_{k:05d}/{stage}.log.rank1").read_text()
            for r, text in ((0, log0), (1, log1)):
                n = re.search(rf"rank {r} of 2: CPU affinity (\d+) CPUs", text)
                assert n and int(n.group(1)) == 1, (r, stage, k, text[-1500:])
            stamps += [time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
                       for t, ms in re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", log1, re.M)]
    assert max(stamps) - min(stamps) > wait, f"rank 1 served {max(stamps) - min(stamps):.1f} s, WaitTime {wait} s"
    pids = _rank_pids(wd)
    assert len(pids[0]) == 1 and len(pids[1]) == 1, pids
    (_, where0), = pids[0]
    (_, where1), = pids[1]
    assert where0.endswith("(node n1)") and where1.endswith("(node n2)"), pids
    _check_against_one_process(wd, one_process, two_ranks, "slurm")
