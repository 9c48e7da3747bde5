"""Issue 22: what would fail on the first GPU cluster run, as data (no GPU, no live Slurm needed).

Reward devices (item 1): every model a reward builds gets ``runtime.device``; a CPU reward model on a
GPU run is refused unless ``reward.allow_cpu`` lists it; the paper preset scores through GenEval's
evaluator server."""

from pathlib import Path

import pytest
import yaml

from opgrpo_stages import config as C
from opgrpo_stages.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _gpu_cfg(options, terms=None, allow_cpu=None):
    from conftest import tiny_config

    reward = {"terms": terms or {name: 1.0 for name in options}, "options": options}
    if allow_cpu is not None:
        reward["allow_cpu"] = allow_cpu
    cfg = tiny_config(reward=reward, runtime={"device": "cuda"})
    cfg["reward"]["terms"] = reward["terms"]  # deep_merge keeps tiny_config's terms otherwise
    return C.resolve_run(cfg, "flowgrpo")


@pytest.fixture
def captured(monkeypatch):
    """GenEval's model backends replaced by recorders of the kwargs they are built with."""
    from opgrpo_stages.rewards import geneval as G

    got = {}
    monkeypatch.setattr(G, "build_detector", lambda name, **kw: got.setdefault("detector", (name, kw)))
    monkeypatch.setattr(G, "build_color_classifier", lambda name, **kw: got.setdefault("color", (name, kw)))
    return got


GENEVAL_MODELS = {"detector": "mask2former", "detector_kwargs": {"checkpoint": "x.pth"}, "color_classifier": "clip",
                  "color_classifier_kwargs": {"path": "clip"}}


def test_geneval_models_are_built_on_the_runtime_device(captured):
    from opgrpo_stages.stages.score import build_term

    build_term(_gpu_cfg({"geneval": GENEVAL_MODELS}), "geneval")
    assert captured["detector"][1]["device"] == "cuda"
    assert captured["color"][1]["device"] == "cuda"


def test_geneval_model_kwargs_keep_their_own_device(captured):
    from opgrpo_stages.stages.score import build_term

    opts = {**GENEVAL_MODELS, "detector_kwargs": {"checkpoint": "x.pth", "device": "cuda:1"}}
    build_term(_gpu_cfg({"geneval": opts}), "geneval")
    assert captured["detector"][1]["device"] == "cuda:1" and captured["color"][1]["device"] == "cuda"


def test_cpu_reward_model_on_a_gpu_run_is_refused_naming_the_key(captured):
    from opgrpo_stages.stages.score import build_terms

    opts = {**GENEVAL_MODELS, "color_classifier_kwargs": {"path": "clip", "device": "cpu"}}
    with pytest.raises(ConfigError, match=r"reward\.options\.geneval\.color_classifier_kwargs\.device.*reward\.allow_cpu"):
        build_terms(_gpu_cfg({"geneval": opts}))
    assert not captured  # refused before any model is built
    build_terms(_gpu_cfg({"geneval": opts}, allow_cpu=["geneval"]))  # the documented way to accept it
    assert captured["color"][1]["device"] == "cpu"


def test_ocr_on_a_gpu_run_needs_allow_cpu_and_refuses_device_cuda():
    from opgrpo_stages.rewards import check_devices
    from opgrpo_stages.rewards.ocr import OcrReward

    with pytest.raises(ConfigError, match="reward.allow_cpu"):
        check_devices(_gpu_cfg({"ocr": {}}))
    check_devices(_gpu_cfg({"ocr": {}}, allow_cpu=["ocr"]))
    with pytest.raises(ConfigError, match=r"reward\.options\.ocr\.device = 'cuda'.*CPU only"):
        OcrReward(device="cuda")


def test_rewards_without_a_model_and_cpu_runs_pass():
    from opgrpo_stages.rewards import check_devices

    check_devices(_gpu_cfg({"geneval": {}, "brightness": {}}))  # embedded detector: rules, no model
    from conftest import tiny_config

    cfg = C.resolve_run(tiny_config(reward={"terms": {"ocr": 1.0}}), "flowgrpo")
    check_devices(cfg)  # runtime.device cpu


@pytest.mark.parametrize("name", ["sd35_geneval.yaml", "sd35_ocr.yaml", "sd35_pickscore.yaml", "wan21_ocr.yaml"])
def test_presets_put_no_reward_model_on_the_cpu_unawares(name):
    from opgrpo_stages.rewards import check_devices

    cfg = C.load(REPO / "presets" / name)
    for run in cfg["runs"]:
        check_devices(C.resolve_run(cfg, run, name))


def test_geneval_preset_scores_through_the_evaluator_server():
    cfg = yaml.safe_load((REPO / "presets/sd35_geneval.yaml").read_text())
    assert cfg["reward"]["options"]["geneval"]["server"]["url"]
