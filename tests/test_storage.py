"""Pruning old iterations' trajectories and images (``storage``): which iterations are kept, and
on a real pipeline run: pruned files stay pruned, nothing is regenerated, the report is built,
and the run extends with more iterations afterwards."""

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import tiny_config
from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.execution import storage

REPO = Path(__file__).resolve().parents[1]


def test_kept_iterations():
    cfg = C.resolve_run(tiny_config(storage={"prune": True, "keep_last": 2, "keep_every": 3}), "flowgrpo")
    assert [j for j in range(7) if storage.kept(cfg, j, 7)] == [2, 5, 6]
    cfg["storage"]["keep_every"] = None
    assert [j for j in range(7) if storage.kept(cfg, j, 7)] == [6]


def test_pruned_states(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.resolve_run(tiny_config(train={"iterations": 10}, eval={"every": 3},
                                    storage={"prune": True, "prune_states": True, "keep_last": 1}), "flowgrpo")
    for j in range(6):
        for f in ("trajectories", "images", "policy", "optimizer"):
            p = Path(getattr(L, f)("flowgrpo", j))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    storage.prune(cfg, 5)
    left = sorted(str(p.relative_to(tmp_path / "runs/flowgrpo")) for p in (tmp_path / "runs").rglob("*.safetensors"))
    # 5 is being sampled; 4 is its starting state; 2 was evaluated (eval.every 3): their states stay
    assert left == ["iter_00002/optimizer.safetensors", "iter_00002/policy.safetensors",
                    "iter_00004/optimizer.safetensors", "iter_00004/policy.safetensors",
                    "iter_00005/images.safetensors", "iter_00005/optimizer.safetensors",
                    "iter_00005/policy.safetensors", "iter_00005/trajectories.safetensors"]


def test_prune_off_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.resolve_run(tiny_config(), "flowgrpo")
    f = tmp_path / "runs/flowgrpo/iter_00000/trajectories.safetensors"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    assert storage.prune(cfg, 5) == [] and f.exists()


def _smk(wd, *extra):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "--profile",
           str(REPO / "profiles/local"), "--configfile", str(wd / "config.yaml"), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={"PYTHONPATH": str(REPO),
                                                                               "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res.stdout + res.stderr


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_pruned_run_is_not_regenerated_and_extends(tmp_path):
    cfg = tiny_config(train={"iterations": 3}, eval={"every": 3},
                      storage={"prune": True, "prune_states": True, "keep_last": 1, "keep_every": 2})
    cfg["runs"] = {"opgrpo": {"replay": {"fraction": 0.5, "truncation": 2}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    _smk(tmp_path)
    it = tmp_path / "runs/opgrpo"
    has = lambda j: [(it / f"iter_{j:05d}/{n}.safetensors").exists() for n in ("trajectories", "images")]  # noqa: E731
    assert [has(j) for j in range(3)] == [[False, False], [True, True], [True, True]]
    states = ("policy.safetensors", "optimizer.safetensors", "buffer.safetensors", "buffer.parquet",
              "update_metrics.parquet", "samples.parquet", "rewards.parquet")
    assert [(it / "iter_00000" / n).exists() for n in states] == [False, False, False, True, True, True, True]
    assert all((it / "iter_00001" / n).exists() for n in states)  # a keep_every iteration
    assert (tmp_path / "results/main/tables/results.csv").exists()
    assert "Nothing to be done" in _smk(tmp_path, "-n")  # Snakemake does not want the pruned files back
    # runs/<run>/final/ (Table 1/2 of the intermediate and best checkpoints) follows the run's length
    # the TensorBoard record of the old last iteration is rewritten with the buffer it now has (monitor/)
    before = {p: (p.stat().st_mtime_ns, _sha(p)) for p in it.rglob("*")
              if p.is_file() and "final" not in p.parts and "tfevents" not in p.name}

    cfg["train"]["iterations"] = 4
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    _smk(tmp_path)
    assert [has(j) for j in range(4)] == [[False, False], [True, True], [False, False], [True, True]]
    # iteration 3 pruned iteration 2's big files; every other earlier file is untouched (not recomputed)
    now_pruned = {it / f"iter_00002/{n}.safetensors" for n in ("trajectories", "images")}
    assert {p: (p.stat().st_mtime_ns, _sha(p)) for p in before if p not in now_pruned} == \
        {p: v for p, v in before.items() if p not in now_pruned}
    assert (it / "iter_00003/policy.safetensors").exists() and (it / "eval/iter_00003.parquet").exists()
