"""The paper's presets (presets/*.yaml) are valid configurations, alone (stage CLI) and as an overlay
on config.yaml (`snakemake --configfile presets/X.yaml`), and carry Flow-GRPO's settings."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "presets").glob("*.yaml"))
SD3_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
               "attn.add_v_proj", "attn.to_add_out"]


def _resolved(cfg):
    from opgrpo_stages import config as C

    C.validate(cfg, "preset")
    C.expand_seed_runs(cfg)
    return {r: C.resolve_run(cfg, r, "preset") for r in cfg["runs"]}


def test_the_four_paper_presets_exist():
    assert {p.name for p in PRESETS} >= {"sd35_geneval.yaml", "sd35_ocr.yaml", "sd35_pickscore.yaml", "wan21_ocr.yaml"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_is_valid_alone_and_over_config_yaml(preset):
    from opgrpo_stages import config as C

    alone = _resolved(C.load(preset))
    over = _resolved(C.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), yaml.safe_load(preset.read_text())))
    for runs in (alone, over):
        for cfg in runs.values():
            m = cfg["model"]
            assert m["backbone"] in ("sd3", "wan") and m["trainable"] == "lora" and m["base_weights"] is None
            assert (m["lora"]["r"], m["lora"]["alpha"]) == (32, 64)
            assert m["guidance_scale"] == 4.5 and cfg["sampling"]["noise_level"] == 0.7
            assert cfg["train"]["timestep_fraction"] == 0.99 and cfg["runtime"]["device"] == "cuda"
    assert alone["flowgrpo"]["replay"]["fraction"] == 0 and alone["opgrpo"]["replay"]["fraction"] == 0.25


@pytest.mark.parametrize("name", ["sd35_geneval.yaml", "sd35_ocr.yaml", "sd35_pickscore.yaml"])
def test_sd35_presets_carry_flow_grpo_settings(name):
    from opgrpo_stages import config as C

    cfg = _resolved(C.load(REPO / "presets" / name))["flowgrpo"]
    m, t = cfg["model"], cfg["train"]
    assert (m["height"], m["width"], m["max_sequence_length"]) == (512, 512, 128)
    assert m["lora"]["target_modules"] == SD3_TARGETS
    assert (cfg["sampling"]["num_steps"], cfg["eval"]["num_steps"]) == (10, 40)
    assert (t["group_size"], t["prompts_per_iteration"], t["lr"], t["clip_range"]) == (24, 48, 3e-4, 1e-4)
    assert t["kl_beta"] == (0.01 if "pickscore" in name else 0.04)


def test_geneval_preset_trains_on_jpeg_like_flow_grpo():
    from opgrpo_stages import config as C

    cfg = _resolved(C.load(REPO / "presets" / "sd35_geneval.yaml"))["opgrpo"]
    assert cfg["reward"]["options"]["geneval"]["jpeg_quality"] == 75
