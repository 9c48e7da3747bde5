"""profiles/slurm: its dry run packs cluster.iterations_per_job iterations into one group job; and
(marked `slurm`) against a live single-node SLURM (tests/slurm/local_slurm.sh): a tiny two-iteration
experiment submitted with `snakemake --profile` runs one cluster job per iteration, its artifacts are
byte-identical to the same run under profiles/local, and a job cancelled mid-iteration is finished by
rerunning the same command. Skips (with the reason) where SLURM cannot be started, e.g. not root;
OPGRPO_REQUIRE_SLURM=1 (set by .ci/run) turns that skip into a failure."""

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests/slurm/local_slurm.sh"
RUN = "opgrpo"
ITERATIONS = 2
LIMIT_S = 900  # guard against a hung executor (e.g. a status command that never answers)


def _unavailable(reason):
    if os.environ.get("OPGRPO_REQUIRE_SLURM") == "1":
        pytest.fail(f"OPGRPO_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    if sys.platform != "linux" or os.geteuid() != 0:
        _unavailable("the test SLURM cluster needs Linux and root (its daemons run as root)")
    if shutil.which("slurmctld", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
        _unavailable("SLURM is not installed (as root: tests/slurm/local_slurm.sh install)")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _unavailable("the slurm extra is not installed (pip install -e '.[slurm]')")
    env = dict(os.environ)
    res = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, env=env, timeout=120)
    if res.returncode != 0:
        _unavailable(f"the test SLURM cluster did not start: {res.stderr.strip()[-2000:]}")
    yield env
    subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, env=env, timeout=120)


def _experiment(wd):
    cfg = tiny_config(train={"iterations": ITERATIONS})
    cfg["runs"] = {RUN: {"replay": {"fraction": 0.5, "truncation": 2}}}  # exercises the replay buffer too
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def _slurm_profile(dest, **over):
    """profiles/slurm with only what this one-node test cluster needs changed: no accounting (squeue
    for job status, polled soon), small jobs, SLURM logs kept so job ids can be checked."""
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    prof.update({"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 2,
                 "slurm-keep-successful-logs": True, "latency-wait": 5, "cores": 1, **over})
    prof["default-resources"].update({"mem_mb": 1000, "cpus_per_task": 1, "runtime": 10})
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof))
    return dest


def _snakemake_cmd(wd, profile):
    return ["timeout", "-k", "10", str(LIMIT_S), sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
            "-d", str(wd), "--configfile", str(wd / "config.yaml"), "--profile", str(profile)]


def _run(cmd, env=None):
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=LIMIT_S + 60)
    print(f"snakemake --profile {cmd[-1]}: {time.monotonic() - t0:.0f} s, exit {res.returncode}")
    return res


def _artifacts(wd):
    """sha256 of every Parquet and safetensors file the run wrote (per iteration, init, eval, base)."""
    return {str(p.relative_to(wd)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((wd / "runs").rglob("*")) if p.suffix in (".parquet", ".safetensors")}


def _job_of(log):
    m = re.search(r"SLURM job (\d+) on ", Path(log).read_text())
    assert m, f"{log} does not say which SLURM job ran it"
    return m.group(1)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    wd = _experiment(tmp_path_factory.mktemp("local"))
    res = _run(_snakemake_cmd(wd, REPO / "profiles/local"))
    assert res.returncode == 0, res.stderr[-5000:]
    return _artifacts(wd)


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="the slurm extra is not installed")
@pytest.mark.parametrize("per_job, groups", [(1, ["opgrpo-iters00000", "opgrpo-iters00001", "opgrpo-iters00002"]),
                                             (2, ["opgrpo-iters00000", "opgrpo-iters00002"])])
def test_slurm_profile_packs_iterations_into_group_jobs(tmp_path, per_job, groups):
    cfg = tiny_config(train={"iterations": 3}, cluster={"iterations_per_job": per_job})
    cfg["runs"] = {RUN: {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(tmp_path / "config.yaml"), "--profile", str(REPO / "profiles/slurm"),
                          "-n"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    found = sorted(re.findall(r"Group job (\S+) \(", res.stdout))
    assert found == sorted([*groups, "base-eval"])  # + the base's evaluations


@pytest.mark.slurm
def test_slurm_profile_runs_one_job_per_iteration_identical_to_local(slurm, local_run, tmp_path):
    wd = _experiment(tmp_path / "wd")
    res = _run(_snakemake_cmd(wd, _slurm_profile(tmp_path / "profile")), env=slurm)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]

    submitted = re.findall(r"submitted with SLURM jobid (\d+)", res.stdout + res.stderr)
    per_iteration = []
    for k in range(ITERATIONS):
        logs = sorted((wd / f"logs/{RUN}/iter_{k:05d}").glob("*.log")) + [wd / f"logs/{RUN}/eval_{k:05d}.log"]
        assert {"rollout.log", "score.log", "policy_update.log"} <= {p.name for p in logs}, logs
        jobs = {_job_of(p) for p in logs}
        assert len(jobs) == 1, f"iteration {k}: stages ran in several cluster jobs {jobs}"
        per_iteration.append(jobs.pop())
    assert _job_of(wd / f"logs/{RUN}/init_policy.log") == per_iteration[0]
    base = _job_of(wd / "logs/base/eval.log")
    assert _job_of(wd / "logs/base/final.log") == base  # the base's evaluations share one job
    for ckpt in ("intermediate", "best"):  # a run's final evaluations go with its last iteration
        assert _job_of(wd / f"logs/{RUN}/final_{ckpt}.log") == per_iteration[-1]
    assert len(set(per_iteration)) == ITERATIONS and base not in per_iteration
    assert sorted(submitted, key=int) == sorted([*per_iteration, base], key=int)
    for job in per_iteration:  # SLURM kept its log, and the job asked for the GPU of its heaviest stage
        assert list((wd / ".snakemake/slurm_logs").rglob(f"{job}.log")), job
        info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=slurm).stdout
        assert re.search(r"TresPerJob=\S*gpu:1\b", info), info

    assert _artifacts(wd) == local_run
    assert len(local_run) >= 7 * ITERATIONS


@pytest.mark.slurm
def test_job_cancelled_mid_iteration_is_finished_by_rerunning_the_same_command(slurm, local_run, tmp_path):
    wd = _experiment(tmp_path / "wd")
    cmd = _snakemake_cmd(wd, _slurm_profile(tmp_path / "profile", retries=0))
    last = ITERATIONS - 1
    rollout_done = wd / f"runs/{RUN}/iter_{last:05d}/trajectories.safetensors"
    policy = wd / f"runs/{RUN}/iter_{last:05d}/policy.safetensors"
    first_iteration = wd / f"runs/{RUN}/iter_00000/policy.safetensors"

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm)
    try:
        while not rollout_done.exists():  # the last iteration's job is past its first stage
            assert proc.poll() is None, f"snakemake ended before the last iteration:\n{proc.stdout.read()[-5000:]}"
            assert time.monotonic() - t0 < LIMIT_S, "the last iteration never started"
            time.sleep(0.5)
        job = _job_of(wd / f"logs/{RUN}/iter_{last:05d}/rollout.log")
        subprocess.run(["scancel", job], check=True, env=slurm)
        out, _ = proc.communicate(timeout=LIMIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"interrupted run: {time.monotonic() - t0:.0f} s, exit {proc.returncode}")
    assert proc.returncode != 0, out[-3000:]
    assert not policy.exists(), "the cancelled iteration finished anyway; the test cancelled too late"
    first_mtime = first_iteration.stat().st_mtime_ns

    res = _run(cmd, env=slurm)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert first_iteration.stat().st_mtime_ns == first_mtime, "the finished iteration was redone"
    assert _job_of(wd / f"logs/{RUN}/iter_{last:05d}/rollout.log") != job
    assert _artifacts(wd) == local_run
