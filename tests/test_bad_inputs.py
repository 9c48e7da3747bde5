"""Bad input matrix: every kind of bad configuration or inter-stage file, one case each.

Each case breaks one thing in a valid working directory (prompts, init state and iteration 0's
rollout and rewards of an OP-GRPO run), runs one stage, and checks that it fails (the stage CLI
with exit status 2, or the stage function with the project's error), that the one message names
the offending file, key or line and says what was expected, and that the directory is unchanged
afterwards: no partial output, no temporary file, no earlier artifact modified."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.errors import OpgrpoError

REPO = Path(__file__).resolve().parents[1]
RUN = "opgrpo"
IT = "runs/opgrpo/iter_00000"


def _config():
    cfg = tiny_config()
    cfg["runs"] = {RUN: {"replay": {"fraction": 0.5, "truncation": 2}}}
    return cfg


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory):
    """prompts, init state, rollout and score of iteration 0 (built with the stage functions)."""
    from opgrpo_stages.stages.init_policy import init_policy
    from opgrpo_stages.stages.prompts import make_prompts
    from opgrpo_stages.stages.rollout import rollout
    from opgrpo_stages.stages.score import score

    wd = tmp_path_factory.mktemp("valid")
    (wd / "config.yaml").write_text(yaml.safe_dump(_config()))
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        cfg = C.resolve_run(C.load("config.yaml"), RUN)
        for split in ("train", "heldout"):
            make_prompts(cfg, split, L.prompts(split))
        init_policy(cfg, **L.stage_paths("init_policy", RUN, -1))
        rollout(cfg, 0, **L.stage_paths("rollout", RUN, 0))
        score(cfg, 0, **L.stage_paths("score", RUN, 0))
    finally:
        os.chdir(cwd)
    return wd


# -- ways to break a file ----------------------------------------------------------------------

def _edit_config(**over):
    def f(wd):
        cfg = yaml.safe_load((wd / "config.yaml").read_text())
        (wd / "config.yaml").write_text(yaml.safe_dump(C.deep_merge(cfg, over)))
    return f


def _edit_tensors(rel, change):
    """Rewrite a safetensors file with ``change(tensors)`` applied, keeping its header."""
    def f(wd):
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(wd / rel), framework="pt") as fh:
            meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
        change(tensors)
        save_file(tensors, str(wd / rel), metadata=meta)
    return f


def _edit_table(rel, change):
    """Rewrite a Parquet table with ``change(df)`` applied, keeping its provenance header."""
    def f(wd):
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = pq.read_schema(wd / rel).metadata or {}
        df = change(pd.read_parquet(wd / rel))
        table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                      b"opgrpo": meta.get(b"opgrpo", b"{}")}), wd / rel)
    return f


def _truncate(rel, keep=300):
    def f(wd):
        (wd / rel).write_bytes((wd / rel).read_bytes()[:keep])
    return f


def _set(df, col, row, value):
    if isinstance(value, float):
        df[col] = df[col].astype("float64")
    df.loc[row, col] = value
    return df


def _bad_prompt_line(wd):
    p = wd / L.prompts("train")
    lines = p.read_text().splitlines()
    lines[2] = "a photo of a red square"  # plain text, not a JSON object
    p.write_text("\n".join(lines) + "\n")


def _drop_last_sample(wd):
    for rel in (f"{IT}/samples.parquet", f"{IT}/rewards.parquet"):  # the two tables still agree
        _edit_table(rel, lambda d: d.iloc[:-1])(wd)


def _first_policy_tensor(change):
    def g(tensors):
        k = sorted(tensors)[0]
        tensors[k] = change(tensors[k])
    return g


def _nan_at(name, value):
    def g(tensors):
        tensors[name][1, 0] = value
    return g


def _wrong_base_weights(wd):
    import torch
    from safetensors.torch import save_file

    (wd / "models").mkdir(exist_ok=True)
    save_file({"conv.weight": torch.zeros(2, 2)}, str(wd / "models/base.safetensors"))
    _edit_config(model={"base_weights": "models/base.safetensors"})(wd)


# (id, break the directory, stage, iteration, how: "cli" or "fn", regex the message must match)
CASES = [
    ("config-unknown-key", _edit_config(train={"group_sise": 4}), "rollout", 0, "cli",
     r"config\.yaml.*train.*'group_sise'.*check the key's spelling"),
    ("config-wrong-type", _edit_config(train={"lr": "fast"}), "rollout", 0, "cli",
     r"config\.yaml: key 'train\.lr': 'fast' is not of type 'number'"),
    ("config-replay-fraction-1.5", _edit_config(replay={"fraction": 1.5}), "rollout", 0, "fn",
     r"config\.yaml: key 'replay\.fraction': 1\.5 is greater than the maximum of 1"),
    ("config-group-size-1", _edit_config(train={"group_size": 1}), "rollout", 0, "fn",
     r"config\.yaml: key 'train\.group_size': 1 is less than the minimum of 2"),
    ("config-truncation-beyond-steps", _edit_config(runs={RUN: {"replay": {"truncation": 9}}}), "rollout", 0,
     "cli", r"config\.yaml \(runs\.opgrpo\): key 'replay\.truncation' = 9 exceeds sampling\.num_steps = 4 "
            r"\(expected 1\.\.4 or null\)"),
    ("truncated-safetensors", _truncate(f"{IT}/trajectories.safetensors"), "policy_update", 0, "cli",
     rf"{IT}/trajectories\.safetensors: not a readable safetensors file \(truncated or corrupt\?\)"),
    ("missing-tensor", _edit_tensors(f"{IT}/trajectories.safetensors", lambda t: t.pop("logp_behavior")),
     "buffer_update", 0, "fn", rf"{IT}/trajectories\.safetensors: missing tensor 'logp_behavior' \(a .* file needs"),
    ("wrong-dtype", _edit_tensors("runs/opgrpo/init/policy.safetensors", _first_policy_tensor(lambda t: t.double())),
     "rollout", 0, "fn", r"runs/opgrpo/init/policy\.safetensors: tensor '.*' has dtype float64, model expects float32"),
    ("wrong-shape", _edit_tensors(f"{IT}/images.safetensors", lambda t: t.__setitem__("images", t["images"][..., :2].contiguous())),
     "score", 0, "fn", rf"{IT}/images\.safetensors: tensor 'images' has shape \(8, 32, 32, 2\), "
                       r"expected \(N, H, W, 3\)"),
    ("truncated-parquet", _truncate(f"{IT}/samples.parquet", 100), "score", 0, "fn",
     rf"{IT}/samples\.parquet: not a readable Parquet file \(truncated or corrupt\?\)"),
    ("table-missing-column", _edit_table(f"{IT}/samples.parquet", lambda d: d.drop(columns=["group"])), "score", 0,
     "cli", rf"{IT}/samples\.parquet: samples table is missing column 'group' \(expected columns \["),
    ("nan-reward", _edit_table(f"{IT}/rewards.parquet", lambda d: _set(d, "reward", 2, float("nan"))),
     "buffer_update", 0, "fn", rf"{IT}/rewards\.parquet: column 'reward' has a non-finite value \(NaN or inf\) at row 2"),
    ("reward-ids-do-not-match-samples",
     _edit_table(f"{IT}/rewards.parquet", lambda d: _set(d, "sample_id", 0, "00000-999-00")), "policy_update", 0,
     "fn", rf"{IT}/rewards\.parquet: sample ids do not match {IT}/samples\.parquet: missing \['00000-000-00'\], "
           r"unexpected \['00000-999-00'\]"),
    ("samples-do-not-match-trajectories", _drop_last_sample,
     "buffer_update", 0, "fn", rf"{IT}/trajectories\.safetensors: holds 8 trajectories but {IT}/samples\.parquet "
                               r"lists 7 samples"),
    ("nan-logprob", _edit_tensors(f"{IT}/trajectories.safetensors", _nan_at("logp_old", float("nan"))),
     "policy_update", 0, "cli", rf"{IT}/trajectories\.safetensors: tensor 'logp_old' has a non-finite value at index \[1, 0\]"),
    ("inf-logprob", _edit_tensors(f"{IT}/trajectories.safetensors", _nan_at("logp_behavior", float("inf"))),
     "buffer_update", 0, "fn",
     rf"{IT}/trajectories\.safetensors: tensor 'logp_behavior' has a non-finite value at index \[1, 0\]"),
    ("malformed-prompt-line", _bad_prompt_line, "rollout", 0, "cli",
     r"runs/prompts/train\.jsonl:3: not valid JSON .*expected one JSON object per line"),
    ("missing-model-path", _edit_config(model={"base_weights": "models/nowhere.safetensors"}), "evaluate", None,
     "cli", r"model\.base_weights: models/nowhere\.safetensors does not exist"),
    ("wrong-model-path", _wrong_base_weights, "evaluate", None, "fn",
     r"model\.base_weights: models/base\.safetensors does not fit the configured model\.unet"),
    ("missing-sd3-snapshot", _edit_config(model={"backbone": "sd3", "path": "models/sd35", "trainable": "lora",
                                                 "base_weights": None}), "evaluate", None, "cli",
     r"model\.path: models/sd35 is not a directory"),
]


def _snapshot(wd):
    return {str(p.relative_to(wd)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(wd.rglob("*")) if p.is_file()}


def _run_stage(wd, stage, iteration, how):
    """Returns the one error message; fails the test if the stage did not refuse."""
    run = "base" if stage == "evaluate" else RUN
    if how == "cli":
        args = [stage, "--run", run] + ([] if iteration is None else ["--iteration", str(iteration)])
        res = subprocess.run([sys.executable, "-m", "opgrpo_stages.cli", *args], cwd=wd, capture_output=True,
                             text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith(f"opgrpo {stage}: error: ")]
        assert len(lines) == 1, res.stderr[-3000:]
        return lines[0]
    from opgrpo_stages import cli

    cwd = os.getcwd()
    os.chdir(wd)
    try:
        with pytest.raises(OpgrpoError) as err:
            cfg = C.resolve_run(C.load("config.yaml"), RUN)
            fn = cli._func(cli.STAGES[stage])
            paths = L.stage_paths(stage, run, 0 if iteration is None else iteration)
            fn(cfg, **paths) if iteration is None else fn(cfg, iteration, **paths)
    finally:
        os.chdir(cwd)
    return str(err.value)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_named_cause_and_nothing_written(valid_dir, tmp_path, case):
    _id, breaker, stage, iteration, how, pattern = case
    wd = tmp_path / "wd"
    shutil.copytree(valid_dir, wd)
    breaker(wd)
    before = _snapshot(wd)
    msg = _run_stage(wd, stage, iteration, how)
    assert re.search(pattern, msg), f"message does not name the cause:\n{msg}\nexpected /{pattern}/"
    assert _snapshot(wd) == before  # no partial output, no temporary file, earlier artifacts unchanged


def test_snakemake_refuses_a_bad_config_before_running_anything(tmp_path):
    cfg = _config()
    cfg["replay"] = {"fraction": 1.5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--profile", str(REPO / "profiles/local"), "--configfile", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert re.search(r"config\.yaml: key 'replay\.fraction': 1\.5 is greater than the maximum of 1", out), out[-3000:]
    assert not (tmp_path / "runs").exists()



def _poison_replayed_sample(wd):
    """Sample 0 becomes a replayed one whose stored behaviour log-probs are 1000 nats below the
    current policy's: its sequence weight exp(sum logp_old - logp_behavior) overflows to inf."""
    _edit_table(f"{IT}/samples.parquet", lambda d: _set(_set(d, "source", 0, "replay"), "kept_steps", 0, 2))(wd)

    def lower(t):
        t["logp_behavior"][0, :2] = t["logp_old"][0, :2] - 1000.0
    _edit_tensors(f"{IT}/trajectories.safetensors", lower)(wd)


def test_nan_in_the_update_writes_no_policy_and_resumes_after_a_config_change(valid_dir, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(valid_dir, wd)
    _poison_replayed_sample(wd)
    before = _snapshot(wd)
    msg = _run_stage(wd, "policy_update", 0, "cli")
    assert re.search(r"policy_update iteration 0, optimizer step 1 of 2: loss is (nan|inf|-inf) at sampler step 0; "
                     r"no policy written\. Set replay\.max_weight", msg), msg
    assert _snapshot(wd) == before
    _edit_config(replay={"max_weight": 10.0})(wd)  # what the message says to do
    res = subprocess.run([sys.executable, "-m", "opgrpo_stages.cli", "policy_update", "--run", RUN, "--iteration", "0"],
                         cwd=wd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    import pandas as pd

    metrics = pd.read_parquet(wd / f"{IT}/update_metrics.parquet")
    assert metrics["weight_capped"].iloc[0] == 1 and metrics["weight_max"].iloc[0] == 10.0
    assert (wd / f"{IT}/policy.safetensors").exists()
