"""Configuration: the shipped config is valid, bad keys and values are named."""

from pathlib import Path

import pytest
import yaml

from opgrpo_stages import config as C
from opgrpo_stages.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid_and_resolves():
    cfg = C.load(REPO / "config.yaml")
    for run in cfg["runs"]:
        rc = C.resolve_run(cfg, run)
        assert rc["run"] == run and rc["train"]["group_size"] >= 2


@pytest.mark.parametrize("over,msg", [
    ({"train": {"lerning_rate": 1e-3}}, r"train.*lerning_rate"),
    ({"train": {"lr": "fast"}}, r"key 'train.lr'"),
    ({"replay": {"fraction": 1.5}}, r"key 'replay.fraction'.*1.5"),
    ({"train": {"group_size": 1}}, r"key 'train.group_size'"),
    ({"sampling": {"sde": "ddim"}}, r"key 'sampling.sde'"),
])
def test_bad_values_name_the_key(over, msg):
    with pytest.raises(ConfigError, match=msg):
        C.validate(C.deep_merge({"runs": {"a": {}}}, over))


def test_truncation_beyond_steps_is_refused():
    cfg = C.validate({"sampling": {"num_steps": 4}, "replay": {"truncation": 6}, "runs": {"a": {}}})
    with pytest.raises(ConfigError, match=r"replay.truncation' = 6 exceeds sampling.num_steps = 4"):
        C.resolve_run(cfg, "a")


def test_one_numbered_gpu_for_several_ranks_is_refused():
    """Each rank selects cuda:LOCAL_RANK; a numbered device would put every rank on one GPU."""
    over = {"runtime": {"device": "cuda:0"}, "distributed": {"processes": 2}, "sampling": {"batch_size": 4},
            "runs": {"a": {}}}
    cfg = C.validate(over)
    with pytest.raises(ConfigError, match=r"runtime.device' = 'cuda:0' with 2 data-parallel processes.*expected 'cuda'"):
        C.resolve_run(cfg, "a")
    for ok in ({"runtime": {"device": "cuda"}}, {"distributed": {"processes": 1}}):
        C.resolve_run(C.validate(C.deep_merge(over, ok)), "a")


def test_run_overrides_are_deep_merged_and_validated():
    cfg = C.validate({"train": {"lr": 1e-4, "group_size": 8}, "runs": {"a": {"train": {"lr": 2e-4}},
                                                                       "b": {"replay": {"fraction": 2}}}})
    assert C.resolve_run(cfg, "a")["train"] == {**C.resolve_run(cfg, "a")["train"], "lr": 2e-4, "group_size": 8}
    with pytest.raises(ConfigError, match=r"runs.b.*replay.fraction"):
        C.resolve_run(cfg, "b")
    with pytest.raises(ConfigError, match="run 'c' is not defined"):
        C.resolve_run(cfg, "c")


def test_unknown_world_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"world": {"shapez": ["square"]}, "runs": {"a": {}}}))
    cfg = C.load(p)
    with pytest.raises(ConfigError, match="world.*shapez"):
        C.resolve_run(cfg, "a")


def test_backbone_defaults_fill_lora_and_dtype_per_run():
    """Issue 13 item 9: without a preset, sd3/wan train Flow-GRPO's LoRA r=32/alpha=64 in bf16
    (train_sd3.py / train_wan2_1.py LoraConfig(r=32, lora_alpha=64), mixed_precision bf16), the
    tiny backbone keeps r=8/alpha=16; explicit keys win; a run switching the backbone gets its own."""
    cfg = C.validate({"model": {"trainable": "lora"}, "runs": {
        "tiny": {}, "sd3": {"model": {"backbone": "sd3", "base_weights": None}},
        "wan": {"model": {"backbone": "wan", "base_weights": None, "dtype": "float32", "lora": {"r": 4}}}}})
    assert cfg["model"]["lora"]["r"] is None and cfg["model"]["dtype"] is None  # top level: not yet decided
    got = {r: C.resolve_run(cfg, r)["model"] for r in cfg["runs"]}
    assert (got["tiny"]["lora"]["r"], got["tiny"]["lora"]["alpha"], got["tiny"]["dtype"]) == (8, 16, "float32")
    assert (got["sd3"]["lora"]["r"], got["sd3"]["lora"]["alpha"], got["sd3"]["dtype"]) == (32, 64, "bfloat16")
    assert (got["wan"]["lora"]["r"], got["wan"]["lora"]["alpha"], got["wan"]["dtype"]) == (4, 64, "float32")


def test_setup_torch_sets_what_gpu_determinism_needs(monkeypatch):
    """Issue 13 item 11: CUBLAS_WORKSPACE_CONFIG (unless the environment sets it), deterministic
    algorithms (warn-only / strict / off) and cuDNN without autotuning."""
    import torch

    from opgrpo_stages.stages.common import setup_torch

    def run(mode):
        return setup_torch({"runtime": {"torch_threads": torch.get_num_threads(), "deterministic": mode}})

    try:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        run("warn")
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        run("strict")
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's own value wins
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        run("fast")
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        with pytest.raises(ValueError, match="runtime.deterministic"):
            run("off")
    finally:
        run("warn")


def test_rerun_params_follow_what_each_stage_reads():
    """Issue 25: the base model's evaluation does not depend on training keys; the report only on
    `report`; the dry run's reason names keys, old -> new."""
    from conftest import tiny_config
    from opgrpo_stages import config as C

    cfg = C.resolve_run(tiny_config(), "flowgrpo")
    sections = lambda stage: {p.split("=")[0] for p in C.stage_params(cfg, stage)}  # noqa: E731
    assert "train" in sections("evaluate") and "train" not in sections("evaluate_base")
    assert not {"train", "replay", "prompts.train"} & sections("final_eval_base")
    assert sections("report") == {"report"}
    assert {"train", "replay", "sampling"} <= sections("policy_update") and "eval" not in sections("policy_update")


def test_params_change_is_key_by_key():
    from opgrpo_stages import config as C

    old = [repr('train={"clip": 1, "lr": 0.0001}'), repr('reward={"terms": {"a": 1.0, "b": 2.0}}'),
           repr('eval={"every": 5}'), repr("")]
    new = ['train={"clip": 1, "lr": 0.0003}', 'reward={"terms": {"a": 1.0}}', 'report={"grid_prompts": 12}']
    change = C.params_change(old, new)
    assert change == {"report.grid_prompts": (None, "12"), "reward.terms.b": ("2.0", None),
                      "train.lr": ("0.0001", "0.0003")}  # `eval`, no longer a dependency: no change
    assert C.format_params_change(change) == \
        "report.grid_prompts: (none) -> 12; reward.terms.b: 2.0 -> (none); train.lr: 0.0001 -> 0.0003"
    assert C.params_change(old, old) == {} and C.params_change(old, new[:1] + old[1:]) == {"train.lr": ("0.0001", "0.0003")}
