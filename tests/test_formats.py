"""Every file format rejects corrupt or mis-shaped input with an error naming file and field."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from opgrpo_stages.errors import ArtifactError
from opgrpo_stages.formats import buffer as buffer_fmt
from opgrpo_stages.formats import images as images_fmt
from opgrpo_stages.formats import prompts as prompts_fmt
from opgrpo_stages.formats import tables, trajectories
from opgrpo_stages.formats.atomic import atomic_path


def _traj(n=3, s=4):
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(n, s, generator=g)
    return trajectories.Trajectories(
        latents=torch.randn(n, s + 1, 3, 8, 8, generator=g), sigmas=torch.linspace(1, 0, s + 1),
        logp_old=lp, logp_behavior=lp.clone(), train_steps=torch.ones(n, s, dtype=torch.bool),
        meta={"run": "r", "iteration": 0})


def test_trajectories_round_trip(tmp_path):
    t = _traj()
    trajectories.write(tmp_path / "t.safetensors", t)
    back = trajectories.read(tmp_path / "t.safetensors")
    assert torch.equal(back.latents, t.latents) and back.meta == {"run": "r", "iteration": 0}


def test_truncated_file_names_the_file(tmp_path):
    p = tmp_path / "t.safetensors"
    trajectories.write(p, _traj())
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ArtifactError, match="t.safetensors.*truncated or corrupt"):
        trajectories.read(p)


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.pop("logp_old"), "missing tensor 'logp_old'"),
    (lambda d: d.__setitem__("logp_old", d["logp_old"].double()), "'logp_old' has dtype float64, expected float32"),
    (lambda d: d.__setitem__("logp_old", d["logp_old"][:2]), "'logp_old' has N=2"),
    (lambda d: d.__setitem__("sigmas", d["sigmas"][:3]), "sigmas"),
    (lambda d: d["logp_old"].__setitem__((0, 1), float("nan")), "'logp_old' has a non-finite value"),
])
def test_bad_tensors_are_named(tmp_path, mutate, msg):
    from safetensors.torch import save_file

    t = _traj()
    tensors = {k: getattr(t, k).clone() for k in trajectories.SCHEMA}
    mutate(tensors)
    p = tmp_path / "bad.safetensors"
    save_file(tensors, str(p), metadata={"opgrpo": json.dumps({"format": trajectories.KIND})})
    with pytest.raises(ArtifactError, match=msg) as err:
        trajectories.read(p)
    assert "bad.safetensors" in str(err.value)


def test_wrong_kind_of_file(tmp_path):
    images_fmt.write(tmp_path / "i.safetensors", np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ArtifactError, match="is not a 'opgrpo.trajectories/1' file"):
        trajectories.read(tmp_path / "i.safetensors")


def _samples(n=4):
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "prompt_id": ["p"] * n, "prompt": ["x"] * n,
                         "metadata": ["{}"] * n, "tag": ["t"] * n, "group": np.zeros(n, np.int64),
                         "source": ["fresh"] * n, "birth_iteration": np.zeros(n, np.int64),
                         "kept_steps": np.zeros(n, np.int64)})


def test_table_missing_column_and_nan_reward(tmp_path):
    df = _samples().drop(columns=["group"])
    with pytest.raises(ArtifactError, match="missing column 'group'"):
        tables.write(tmp_path / "s.parquet", df, "samples")
    assert not (tmp_path / "s.parquet").exists()
    r = pd.DataFrame({"sample_id": ["a", "b"], "reward": [0.5, float("nan")]})
    r.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(ArtifactError, match=r"r.parquet: column 'reward' has a non-finite value .* row 1"):
        tables.read(tmp_path / "r.parquet", "rewards")


def test_rewards_must_match_samples(tmp_path):
    s = _samples(3)
    r = pd.DataFrame({"sample_id": ["s0", "s1", "zz"], "reward": [0.0, 1.0, 0.5]})
    with pytest.raises(ArtifactError, match=r"r.parquet: sample ids do not match s.parquet: missing \['s2'\]"):
        tables.check_aligned("s.parquet", s, "r.parquet", r)


def test_duplicate_sample_ids_rejected(tmp_path):
    df = _samples(2)
    df.loc[1, "sample_id"] = "s0"
    with pytest.raises(ArtifactError, match="duplicate value 's0'"):
        tables.write(tmp_path / "s.parquet", df, "samples")


def test_prompt_file_malformed_line_names_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a photo of a square"}\nnot json\n')
    with pytest.raises(ArtifactError, match=r"p.jsonl:2: not valid JSON"):
        prompts_fmt.read(p)
    p.write_text('{"text": "x"}\n')
    with pytest.raises(ArtifactError, match=r"p.jsonl:1: expected a JSON object with a non-empty string 'prompt'"):
        prompts_fmt.read(p)


def test_buffer_round_trip_and_empty(tmp_path):
    b = buffer_fmt.empty(4, (3, 8, 8))
    buffer_fmt.write(tmp_path / "b.safetensors", tmp_path / "b.parquet", b)
    back = buffer_fmt.read(tmp_path / "b.safetensors", tmp_path / "b.parquet")
    assert len(back) == 0 and back.latents.shape == (0, 5, 3, 8, 8)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert list(tmp_path.iterdir()) == [p]
