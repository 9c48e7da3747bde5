"""profiles/slurm: its dry run packs cluster.iterations_per_job iterations into one group job and puts
each held-out evaluation in a job of its own; and (marked `slurm`) against a live local SLURM (two nodes on this host,
tests/slurm/local_slurm.sh): a tiny three-iteration experiment, two iterations per job, submitted with
`snakemake --profile` runs every stage of a job in one process (the resident worker: one pid in all
its stage logs, one backbone load), asks SLURM for the walltime derived from the config, trains the
next job while the previous job's evaluation is still held in the queue, writes artifacts
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
ITERATIONS = 3
PER_JOB = 2  # iterations per cluster job: jobs {0, 1} and {2}
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
    cfg = tiny_config(train={"iterations": ITERATIONS}, eval={"every": 2}, cluster={"iterations_per_job": PER_JOB, "cpus_per_rank": 1})  # the test nodes have this machine's CPUs
    cfg["runs"] = {RUN: {"replay": {"fraction": 0.5, "truncation": 2}}}  # exercises the replay buffer too
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def _slurm_profile(dest, hold_eval=False, **over):
    """profiles/slurm with only what this one-node test cluster needs changed: no accounting (squeue
    for job status, polled soon), small jobs, SLURM logs kept so job ids can be checked;
    ``hold_eval``: evaluation jobs are submitted held (sbatch --hold) until the test releases them."""
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    prof.update({"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 2,
                 "slurm-keep-successful-logs": True, "latency-wait": 5, "cores": 1, **over})
    prof["default-resources"].update({"mem_mb": 1000, "cpus_per_task": 1, "runtime": 10})
    prof["set-resources"].update({r: {"mem_mb": 1000} for r in ("init_policy", "rollout", "score", "buffer_update",
                                                                 "policy_update", "evaluate")})
    if hold_eval:
        for rule in ("evaluate", "final_eval"):
            prof["set-resources"][rule] = {**prof["set-resources"].get(rule, {}), "slurm_extra": "--hold"}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof))
    return dest


def _snakemake_cmd(wd, profile, *targets):
    return ["timeout", "-k", "10", str(LIMIT_S), sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
            "-d", str(wd), "--configfile", str(wd / "config.yaml"), "--profile", str(profile), *targets]


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


def _worker_of(log):
    """(SLURM job, worker pid, backbone builds so far in that process) from a stage log."""
    text = Path(log).read_text()
    pid = re.search(r"worker pid (\d+)", text)
    loads = re.search(r"backbone_loads=(\d+)", text)
    assert pid and loads, f"{log} does not name its worker process"
    return _job_of(log), pid.group(1), int(loads.group(1))


def _queue(env):
    """{job id: (state, comment)} of the jobs SLURM holds now."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, env=env).stdout
    return {i: (state, comment) for i, state, comment in (line.split("|", 2) for line in out.splitlines() if line)}


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
    cfg = tiny_config(train={"iterations": 3}, cluster={"iterations_per_job": per_job}, eval={"every": 1})
    cfg["runs"] = {RUN: {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(tmp_path / "config.yaml"), "--profile", str(REPO / "profiles/slurm"),
                          "-n"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    found = sorted(re.findall(r"Group job (\S+) \(", res.stdout))
    evals = ["opgrpo-eval00000", "opgrpo-eval00001", "opgrpo-eval00002"]  # each evaluation a job of its own
    assert found == sorted([*groups, *evals, "base-eval"])  # + the base's evaluations


@pytest.mark.slurm
def test_slurm_jobs_are_resident_workers_and_evaluation_does_not_block_training(slurm, local_run, tmp_path):
    from opgrpo_stages.execution import cluster
    from opgrpo_stages import config as C

    wd = _experiment(tmp_path / "wd")
    cmd = _snakemake_cmd(wd, _slurm_profile(tmp_path / "profile", hold_eval=True))
    next_job_trained = wd / f"runs/{RUN}/iter_{PER_JOB:05d}/trajectories.safetensors"  # job 2 is under way
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm)
    held_while_training, released = None, set()
    try:
        while proc.poll() is None:
            assert time.monotonic() - t0 < LIMIT_S, "the run did not finish"
            queue = _queue(slurm)
            held = {i for i, (_state, comment) in queue.items() if "eval" in comment and i not in released}
            if held_while_training is None and next_job_trained.exists():
                # the second training job is running while the first job's evaluations sit held in the queue
                held_while_training = {queue[i][1] for i in held if queue[i][0] == "PENDING"}
            if held and held_while_training is not None:  # from then on, let the evaluations run
                subprocess.run(["scontrol", "release", *sorted(held)], env=slurm, capture_output=True)
                released |= held
            time.sleep(0.5)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"snakemake --profile slurm: {time.monotonic() - t0:.0f} s, exit {proc.returncode}")
    assert proc.returncode == 0, out[-6000:]
    assert held_while_training and any("00001" in c for c in held_while_training), (
        f"evaluation of iteration 1 was not waiting in the queue when iteration {PER_JOB} had sampled: "
        f"{held_while_training}")

    # every stage of a training job ran in one process of that job, which built the backbone once
    jobs = {}
    for k in range(ITERATIONS):
        for stage in ("rollout", "score", "buffer_update", "policy_update"):
            log = wd / f"logs/{RUN}/iter_{k:05d}/{stage}.log"
            if stage == "buffer_update" and k == ITERATIONS - 1:
                assert not log.exists()  # the last buffer is no one's input
                continue
            jobs.setdefault(k // PER_JOB, set()).add(_worker_of(log))
    jobs[0].add(_worker_of(wd / f"logs/{RUN}/init_policy.log"))
    for j, workers in jobs.items():
        assert len({(job, pid) for job, pid, _ in workers}) == 1, f"job {j}: stages ran in several processes {workers}"
        assert max(n for _, _, n in workers) == 1, f"job {j}: the backbone was built more than once {workers}"
    (train0, _, _), = {w[:2] + (0,) for w in jobs[0]}
    (train1, _, _), = {w[:2] + (0,) for w in jobs[1]}
    evals = {k: _job_of(wd / f"logs/{RUN}/eval_{k:05d}.log") for k in (1, 2)}
    assert len({train0, train1, *evals.values()}) == 4  # evaluation: jobs of their own
    for ckpt in ("intermediate", "best"):  # a run's final evaluations go with its last evaluation
        assert _job_of(wd / f"logs/{RUN}/final_{ckpt}.log") == evals[2]
    base = _job_of(wd / "logs/base/eval.log")
    assert _job_of(wd / "logs/base/final.log") == base

    # the walltime SLURM was asked for is the sum of the stages' runtimes derived from the config
    run_cfg = C.resolve_run(yaml.safe_load((wd / "config.yaml").read_text()), RUN)
    minutes = {s: cluster.runtime_minutes(run_cfg, s) for s in cluster.STAGES}
    # Snakemake sums the runtimes of a group's jobs
    want = minutes["init_policy"] + PER_JOB * sum(minutes[s] for s in ("rollout", "score", "buffer_update",
                                                                       "policy_update"))
    info = subprocess.run(["scontrol", "show", "job", train0], capture_output=True, text=True, env=slurm).stdout
    assert re.search(r"TresPerJob=\S*gpu:1\b", info), info
    limit = re.search(r"TimeLimit=(?:(\d+)-)?(\d+):(\d+):(\d+)", info)
    d, h, m, _s = (int(x or 0) for x in limit.groups())
    assert d * 1440 + h * 60 + m == want, info

    assert _artifacts(wd) == local_run
    assert len(local_run) >= 7 * ITERATIONS


@pytest.mark.slurm
def test_job_cancelled_mid_iteration_is_finished_by_rerunning_the_same_command(slurm, local_run, tmp_path):
    wd = _experiment(tmp_path / "wd")
    last = ITERATIONS - 1
    # training only (the evaluation jobs are the other test's): the last iteration's policy
    cmd = _snakemake_cmd(wd, _slurm_profile(tmp_path / "profile", retries=0),
                         f"runs/{RUN}/iter_{last:05d}/policy.safetensors")
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
    got = _artifacts(wd)
    assert len(got) >= 6 * ITERATIONS and got == {k: local_run[k] for k in got}
