"""Every artifact's header names its run, iteration and backbone; a stage refuses a file of another
run, iteration or backbone with one line naming it (issue 16, item 1). Also: the per-stage CLI help,
iteration bounds, file modes and `opgrpo status` (items 3 and 9)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "opgrpo_stages.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    """Iteration 0 of run `flowgrpo` rolled out and scored in tmp_path; the configs of both runs."""
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout
    from opgrpo_stages.stages.score import score

    monkeypatch.chdir(tmp_path)
    cfg_all = tiny_config(runs={"flowgrpo": {}, "opgrpo": {"replay": {"fraction": 0.5}}})
    flow, op = C.resolve_run(cfg_all, "flowgrpo"), C.resolve_run(cfg_all, "opgrpo")
    make_prompts(flow, "train", L.prompts("train"))
    init_policy(flow, **L.stage_paths("init_policy", "flowgrpo", -1))
    paths = L.stage_paths("rollout", "flowgrpo", 0)
    paths["embeddings_path"] = None
    rollout(flow, 0, **paths)
    score(flow, 0, **L.stage_paths("score", "flowgrpo", 0))
    return flow, op


def test_stage_refuses_another_runs_files(two_runs):
    from opgrpo_stages import layout as L
    from opgrpo_stages.errors import ArtifactError
    from opgrpo_stages.stages.buffer_update import buffer_update
    from opgrpo_stages.stages.score import score

    flow, op = two_runs
    # the files of run flowgrpo, given to run opgrpo's stages: refused, nothing written
    with pytest.raises(ArtifactError, match=r"samples.parquet: header says run='flowgrpo', expected 'opgrpo'"):
        score(op, 0, **{**L.stage_paths("score", "flowgrpo", 0), "out_rewards": "op_rewards.parquet"})
    assert not Path("op_rewards.parquet").exists()
    # ... or to the same run's next iteration
    with pytest.raises(ArtifactError, match=r"header says iteration=0, expected 1"):
        score(flow, 1, **{**L.stage_paths("score", "flowgrpo", 0), "out_rewards": "r1.parquet"})
    paths = L.stage_paths("buffer_update", "flowgrpo", 0)
    with pytest.raises(ArtifactError, match=r"init/buffer.safetensors: header says run='flowgrpo', expected 'opgrpo'"):
        buffer_update(op, 0, **{**paths, "out_buffer": "b.safetensors", "out_buffer_table": "b.parquet"})
    assert not Path("b.safetensors").exists()


def test_reader_checks_backbone_and_header_presence(tmp_path):
    import pandas as pd
    import torch

    from opgrpo_stages.errors import ArtifactError
    from opgrpo_stages.formats import header, policy, tables

    policy.write_policy(tmp_path / "p.safetensors", {"w": torch.zeros(2)}, {"run": "r", "iteration": 3, "backbone": "sd3"})
    want = {"run": "r", "iteration": 3, "backbone": "tiny_unet"}
    with pytest.raises(ArtifactError, match=r"p.safetensors: header says backbone='sd3', expected 'tiny_unet'"):
        policy.read_policy(tmp_path / "p.safetensors", want)
    policy.read_policy(tmp_path / "p.safetensors", {**want, "backbone": "sd3"})  # matching: accepted
    tables.write(tmp_path / "m.parquet", pd.DataFrame({"iteration": [3]}), "update_metrics")  # no header
    with pytest.raises(ArtifactError, match=r"m.parquet: header has no 'run'"):
        tables.read(tmp_path / "m.parquet", "update_metrics", want)
    tables.write(tmp_path / "m.parquet", pd.DataFrame({"iteration": [3]}), "update_metrics", want)
    assert tables.read(tmp_path / "m.parquet", "update_metrics", want)["iteration"].tolist() == [3]
    assert header.of({"run": "r", "model": {"backbone": "tiny_unet"}}, 3) == want


def test_safetensors_mode_follows_umask_like_parquet(tmp_path):
    import pandas as pd
    import torch

    from opgrpo_stages.formats import policy, tables

    policy.write_policy(tmp_path / "p.safetensors", {"w": torch.zeros(2)}, {"run": "r"})
    tables.write(tmp_path / "m.parquet", pd.DataFrame({"iteration": [3]}), "update_metrics")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "m.parquet").stat().st_mode & 0o777 == 0o666 & ~umask


COMMANDS = ["rollout", "score", "buffer_update", "policy_update", "init_policy", "evaluate", "final_eval", "pretrain",
            "prompts", "embed_prompts", "report", "status"]


def _help(capsys, *args) -> str:
    from opgrpo_stages.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*args, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_each_stage_has_its_own_help(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    for stage in COMMANDS:
        out = _help(capsys, stage)
        assert out.startswith(f"usage: opgrpo {stage}"), (stage, out[:300])
    out = _help(capsys, "policy_update", "--run", "flowgrpo", "--iteration", "1")
    assert "--out-policy" in out and "runs/flowgrpo/iter_00001/policy.safetensors" in out
    assert "runs/flowgrpo/iter_00000/optimizer.safetensors" in out  # the previous iteration's state
    out = _help(capsys)
    assert out.startswith("usage: opgrpo") and "status" in out
    (tmp_path / "config.yaml").unlink()  # help still works without a config (no defaults shown)
    assert "--out-rewards" in _help(capsys, "score")


def test_cli_iteration_past_the_end_is_an_error(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    res = _cli(tmp_path, "score", "--run", "flowgrpo", "--iteration", "5")
    assert res.returncode == 2
    assert "iteration 5 of run 'flowgrpo' does not exist: train.iterations = 2" in res.stderr


def test_status_reports_the_current_iteration(tmp_path):
    import pandas as pd

    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L
    from opgrpo_stages.formats import tables
    from opgrpo_stages.monitor.status import status

    cfg = tiny_config(train={"iterations": 5})
    os.chdir(tmp_path)
    try:
        for k in range(2):
            tables.write(L.metrics("flowgrpo", k), pd.DataFrame({"iteration": [k]}), "update_metrics")
        tables.write(L.samples("flowgrpo", 2), pd.DataFrame({c: pd.Series([], dtype="int64" if t == "int" else
                                                                             "float64" if t == "float" else "object")
                                                             for c, t in tables.SAMPLES.items()}), "samples")
        out = status(C.expand_seed_runs(cfg))
    finally:
        os.chdir(REPO)
    assert out.splitlines()[0] == ("flowgrpo: 2/5 iterations finished (current: iteration 1, runs/flowgrpo/iter_00001); "
                   "next: iteration 2, done: rollout; evaluated: 0/5")


def test_output_root_moves_every_path(tmp_path):
    from opgrpo_stages import config as C
    from opgrpo_stages import layout as L

    cfg = tiny_config(output_root="out/exp")
    assert C.validate(cfg)["output_root"] == "out/exp"
    try:
        L.set_root("out/exp")
        assert L.policy("flowgrpo", 3) == "out/exp/runs/flowgrpo/iter_00003/policy.safetensors"
        assert L.prompts("heldout") == "out/exp/runs/prompts/heldout.jsonl"
        assert L.results("main") == "out/exp/results/main" and L.log("x.log") == "out/exp/logs/x.log"
    finally:
        L.set_root("")
    assert L.policy("flowgrpo", 3) == "runs/flowgrpo/iter_00003/policy.safetensors"  # the default: unchanged
    for preset in sorted((REPO / "presets").glob("*.yaml")):
        assert yaml.safe_load(preset.read_text())["output_root"] == f"out/{preset.stem}", preset


def test_docs_say_how_to_add_a_reward():
    import numpy as np

    from opgrpo_stages.rewards import REWARDS, build_reward

    text = (REPO / "docs/rewards.md").read_text()
    section = text.split("## How to add a reward")[1]
    code = section.split("```python")[1].split("```")[0]
    try:
        exec(compile(code.replace("\n   ", "\n"), "docs/rewards.md", "exec"), {})  # the example, as written
        images = np.zeros((2, 4, 4, 3), np.uint8)
        images[1, ..., 0] = 255
        out = build_reward("redness", scale=2.0).score(images, ["a", "b"], [{}, {}])
        assert out["redness"].tolist() == [0.0, 2.0]
    finally:
        REWARDS.pop("redness", None)
