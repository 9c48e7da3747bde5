"""Kill anywhere, resume identically: a short OP-GRPO run (replay on, 3 iterations) is SIGKILLed
at six points (inside rollout; while buffer_update's second output is a temporary file not
yet renamed, its first one complete; inside buffer_update; between two outputs of rollout;
after score wrote its output but before Snakemake recorded the job as done; inside
policy_update, after one optimizer step of two);
after each kill the same command is run again. The final artifacts must be byte-identical to
those of an uninterrupted run, and no temporary file may be left behind. Pruning of old
iterations' trajectories and images is on, so resuming across it is covered too.

The kills come from the ``OPGRPO_FAULT`` hook (opgrpo_stages/execution/faults.py). Every point lies on the
dependency chain of the run, so each one is reached in its invocation whatever order Snakemake
picks for independent jobs."""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
RUN = "opgrpo"
I = "runs/opgrpo/iter_{:05d}"

# (OPGRPO_FAULT pattern, what must be true right after the kill: (path, exists?))
KILLS = [
    (f"rollout:sampled:{RUN}:0", [(I.format(0) + "/trajectories.safetensors", False)]),
    (f"write:*{I.format(0)}/buffer.safetensors", [(I.format(0) + "/buffer.parquet", True),
                                                  (I.format(0) + "/buffer.safetensors", False)]),
    (f"buffer_update:updated:{RUN}:1", [(I.format(1) + "/buffer.safetensors", False)]),
    (f"rollout:between_outputs:{RUN}:2", [(I.format(2) + "/trajectories.safetensors", True),
                                          (I.format(2) + "/samples.parquet", False)]),
    # every output written, Snakemake not yet told: the job must not be trusted (rerun-incomplete)
    (f"rule_done:logs/{RUN}/iter_00002/score.log", [(I.format(2) + "/rewards.parquet", True)]),
    (f"policy_update:step:{RUN}:2", [(I.format(2) + "/policy.safetensors", False)]),
]


def _config():
    # pruning on: the rollout of iteration 2 deletes iteration 0's trajectories and images
    cfg = tiny_config(train={"iterations": 3}, eval={"every": 2},
                      storage={"prune": True, "keep_last": 1, "keep_every": 2})
    cfg["runs"] = {RUN: {"replay": {"fraction": 0.5, "truncation": 2, "capacity": 4}}}
    return cfg


def _snakemake(workdir, fault=None, timeout=600):
    """The user's command (the local profile); its whole process group is SIGKILLed at the end."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile",
           str(REPO / "profiles/local"), "--configfile", str(workdir / "config.yaml")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OPGRPO_FAULT", None)
    if fault:
        env["OPGRPO_FAULT"] = fault
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole tree, as a pre-empted job loses it
        proc.wait()
    return proc.returncode, out


def _artifacts(workdir):
    """sha256 of every file the run produced (logs, Snakemake's own records and TensorBoard event files,
    which hold the stages' timings like the logs, excluded)."""
    out = {}
    for top in ("runs", "results"):
        for p in sorted((workdir / top).rglob("*")):
            if p.is_file() and "tfevents" not in p.name:
                out[str(p.relative_to(workdir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = tmp_path_factory.mktemp("ref")
    (wd / "config.yaml").write_text(yaml.safe_dump(_config()))
    rc, out = _snakemake(wd)
    assert rc == 0, out[-4000:]
    return wd


def test_kill_anywhere_and_rerun_gives_identical_artifacts(reference, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_config()))
    prev_out = done = None
    for pattern, expect in KILLS:
        rc, out = _snakemake(tmp_path, fault=pattern)
        assert rc == -signal.SIGKILL, f"fault {pattern} was not reached (exit {rc}):\n{out[-3000:]}"
        for rel, exists in expect:
            assert (tmp_path / rel).exists() == exists, (pattern, rel)
        if pattern.startswith("rule_done:"):
            done = tmp_path / I.format(2) / "rewards.parquet"
            stamp = done.stat().st_mtime_ns
        if prev_out is not None:  # the killed run's locks did not stop this one
            assert "removed stale lock" in out, out[-3000:]
        prev_out = out
        if pattern.startswith("write:"):  # killed with the temporary file written, not renamed
            assert list((tmp_path / I.format(0)).glob(".buffer.safetensors.*.tmp"))
    rc, out = _snakemake(tmp_path)
    assert rc == 0, out[-4000:]
    assert done.stat().st_mtime_ns != stamp, "a job killed before Snakemake recorded it was trusted"
    ref, got = _artifacts(reference), _artifacts(tmp_path)
    assert any(k.endswith("buffer.safetensors") for k in ref) and any("/results/" in "/" + k for k in ref)
    assert sorted(got) == sorted(ref)
    assert [k for k in ref if got[k] != ref[k]] == []
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file of a killed write was left behind"
    assert not (tmp_path / I.format(0) / "trajectories.safetensors").exists()  # pruned, and not regenerated
