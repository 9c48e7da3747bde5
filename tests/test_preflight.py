"""``opgrpo preflight`` (opgrpo_stages/preflight.py): the paper preset as shipped on this machine is
refused, naming the missing weights and the unreachable GenEval server; the same preset pointed at a
tiny SD3 snapshot and a stand-in GenEval server passes. ``startup_checks`` (the cheap part, for
Snakemake's start-up) names the missing weights too."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "presets" / "sd35_geneval.yaml"


def _preflight(*args, cwd=REPO, path_first=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if path_first:  # a stand-in sinfo ahead of any real one (this machine's test cluster knows no 'gpu')
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "opgrpo_stages.cli", "preflight", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


def _site_sinfo(bindir: Path) -> Path:
    """``sinfo`` of a site with one partition 'gpu' (2-day limit), as the real one answers
    ``sinfo -h -p P`` (one line per node state, nothing for an unknown P) and ``-o %l`` (the limit)."""
    bindir.mkdir(exist_ok=True)
    exe = bindir / "sinfo"
    exe.write_text('#!/bin/sh\ncase " $* " in *" -p gpu "*) ;; *) exit 0 ;; esac\n'
                   'case " $* " in *" -o %l "*) echo "2-00:00:00" ;; *) echo "gpu* up 2-00:00:00 4 idle n[1-4]" ;; esac\n')
    exe.chmod(0o755)
    return bindir


def test_paper_preset_as_shipped_is_refused_naming_weights_and_server():
    res = _preflight("--configfile", str(PRESET))
    assert res.returncode == 1, res.stdout + res.stderr
    blockers = [ln for ln in res.stdout.splitlines() if ln.startswith("BLOCKER")]
    assert any("model.path" in ln for ln in blockers), res.stdout
    assert any("reward.options.geneval.server.url" in ln for ln in blockers), res.stdout


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    from test_evaluators import launch_server, stop, wait_ready
    from tiny_models import build_tiny_sd3

    wd = tmp_path_factory.mktemp("preflight")
    sd3 = build_tiny_sd3(wd / "sd3")
    proc = launch_server("geneval", wd)
    try:
        yield wd, sd3, wait_ready(*proc)
    finally:
        stop(proc[0])


def test_paper_preset_with_standin_weights_and_server_passes(standins):
    wd, sd3, url = standins
    overlay = {"model": {"path": str(sd3)}, "reward": {"options": {"geneval": {"server": {"url": url}}}}}
    (wd / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    prof["default-resources"].update(slurm_partition="gpu", slurm_account="me")
    (wd / "profile.yaml").write_text(yaml.safe_dump(prof))
    res = _preflight("--configfile", str(PRESET), "--configfile", str(wd / "overlay.yaml"), "--profile",
                     str(wd / "profile.yaml"), "--time-limit", "2880", "--node-mem-gb", "512",
                     path_first=_site_sinfo(wd / "bin"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BLOCKER" not in res.stdout and "answers as geneval" in res.stdout
    # a time limit below the job's walltime is a blocker naming the key
    res = _preflight("--configfile", str(PRESET), "--configfile", str(wd / "overlay.yaml"), "--time-limit", "60")
    assert res.returncode == 1 and any("cluster.iterations_per_job" in ln for ln in res.stdout.splitlines()
                                       if ln.startswith("BLOCKER"))


def test_startup_checks_name_the_missing_weights_of_the_runs_the_targets_need(tmp_path):
    from opgrpo_stages import config as C
    from opgrpo_stages.errors import ConfigError
    from opgrpo_stages.preflight import startup_checks

    cfg = C.load(PRESET)
    C.expand_seed_runs(cfg)
    with pytest.raises(ConfigError, match=r"runs\.opgrpo: model\.path: models/stable-diffusion-3\.5-medium"):
        startup_checks(cfg, ["runs/opgrpo/iter_00000/rollout.done"])
    (tmp_path / "m").mkdir()
    for rel in ("model_index.json", "transformer/config.json", "vae/config.json"):
        (tmp_path / "m" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "m" / rel).write_text("{}")
    cfg["model"]["path"] = str(tmp_path / "m")
    startup_checks(cfg, ["main"])  # the server is not contacted at start-up: only paths and devices


def test_startup_checks_refuse_a_cpu_reward_model_on_a_gpu_run(tmp_path):
    from opgrpo_stages import config as C
    from opgrpo_stages.errors import ConfigError
    from opgrpo_stages.preflight import startup_checks

    cfg = C.load(REPO / "presets" / "sd35_pickscore.yaml")
    clip = tmp_path / "clip"
    clip.mkdir()
    cfg["reward"]["options"]["pickscore"] = {"path": str(clip), "device": "cpu"}
    cfg["model"]["path"] = None
    with pytest.raises(ConfigError, match="reward.allow_cpu"):
        startup_checks(cfg)
