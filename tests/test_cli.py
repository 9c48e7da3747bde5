"""The stage CLI: bad input exits 2 with one line naming the file or key, and writes nothing."""

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "opgrpo_stages.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_missing_input_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    res = _cli(tmp_path, "score", "--run", "flowgrpo", "--iteration", "0")
    assert res.returncode == 2
    assert "runs/flowgrpo/iter_00000/samples.parquet: missing samples table" in res.stderr
    assert not (tmp_path / "runs/flowgrpo/iter_00000/rewards.parquet").exists()


def test_bad_config_key_is_named(tmp_path):
    cfg = tiny_config()
    cfg["train"]["group_sise"] = 4
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli(tmp_path, "prompts", "--split", "train")
    assert res.returncode == 2 and "group_sise" in res.stderr
    assert not (tmp_path / "runs").exists()
