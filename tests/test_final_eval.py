"""Stage final_eval (checkpoint choice, metrics, unavailable rows) and the paper's Table 1/2."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from t2icb_tiny_models import AnyTextBackbone
from opgrpo_stages import config as C
from opgrpo_stages import layout as L
from opgrpo_stages.errors import ConfigError, ModelPathError
from opgrpo_stages.rewards import REWARDS, Reward, register_reward
from opgrpo_stages.stages.final_eval import final_eval, select_checkpoints

if "test_needs_model" not in REWARDS:
    @register_reward("test_needs_model")
    class _NeedsModel(Reward):
        """Stands for a model-based reward whose weights are not configured."""

        def __init__(self, path=None, device="cpu"):
            if path is None:
                raise ModelPathError("reward.options.test_needs_model.path is not set: a local model folder")

        def score(self, images, prompts, metadata):
            return {"test_needs_model": np.ones(len(prompts))}


if "test_lazy_model" not in REWARDS:
    @register_reward("test_lazy_model")
    class _LazyModel(Reward):
        """Finds its model missing only when scoring."""

        def score(self, images, prompts, metadata):
            raise ModelPathError("reward.options.test_lazy_model.path does not exist")


def _cfg(**eval_over):
    return C.resolve_run(tiny_config(train={"iterations": 6}, eval={"every": 2, **eval_over}), "flowgrpo")


def test_select_checkpoints_best_and_middle():
    cfg = _cfg()
    assert L.eval_iterations(cfg) == [1, 3, 5]
    assert select_checkpoints(cfg, {1: 0.2, 3: 0.5, 5: 0.4}) == {"intermediate": 3, "best": 3}
    assert select_checkpoints(cfg, {1: 0.6, 3: 0.5, 5: 0.6}) == {"intermediate": 3, "best": 1}  # earliest tie
    assert select_checkpoints(_cfg(intermediate=1), {1: 0.1, 3: 0.2, 5: 0.3})["intermediate"] == 1
    with pytest.raises(ConfigError, match="eval.intermediate = 2"):
        select_checkpoints(_cfg(intermediate=2), {1: 0.1, 3: 0.2, 5: 0.3})


@pytest.fixture
def base_eval(tmp_path, monkeypatch):
    """Held-out prompts and the base model's eval table of a tiny random-init model, in tmp."""
    from opgrpo_stages.stages.evaluate import evaluate
    from opgrpo_stages.stages.prompts import make_prompts

    monkeypatch.chdir(tmp_path)
    cfg = C.resolve_run(tiny_config(eval={"metrics": ["brightness", "test_needs_model", "pickscore", "test_lazy_model"],
                                          "t2i_compbench": {"categories": ["color", "numeracy"]}}),
                        "flowgrpo")
    make_prompts(cfg, "heldout", L.prompts("heldout"))
    evaluate(cfg, prompts_path=L.prompts("heldout"), policy_path=None, out_table=L.eval_table("base", 0))
    return cfg


def test_final_eval_scores_available_metrics_and_marks_the_rest(base_eval):
    from opgrpo_stages.formats import tables
    from opgrpo_stages.stages.final_eval import final_eval_paths

    out = final_eval(base_eval, **final_eval_paths(base_eval, "base", "base"))["table"]
    t = out.set_index(["table", "metric"])
    ev = tables.read(L.eval_table("base", 0), "eval")
    from opgrpo_stages.geneval.rules import summarize

    assert t.loc[("table1", "GenEval"), "value"] == pytest.approx(summarize(list(ev["tag"]),
                                                                            list(ev["correct"]))["overall"])
    # brightness is scored on the same held-out prompts and noise: equals the eval table's column mean
    assert t.loc[("table1", "brightness"), "status"] == "ok"
    assert t.loc[("table1", "brightness"), "value"] == pytest.approx(ev["brightness"].mean())
    assert t.loc[("table1", "brightness"), "n_images"] == len(ev)
    miss = t.loc[("table1", "test_needs_model")]
    assert miss["status"] == "unavailable" and math.isnan(miss["value"]) and "path is not set" in miss["reason"]
    assert "does not exist" in t.loc[("table1", "test_lazy_model"), "reason"]
    assert "reward.options.pickscore.path is not set" in t.loc[("table1", "pickscore"), "reason"]
    assert "vqa_path is not set" in t.loc[("table2", "color"), "reason"]
    assert "detector is not set" in t.loc[("table2", "numeracy"), "reason"]
    assert t.loc[("table2", "shape"), "reason"] == "not in eval.t2i_compbench.categories"
    assert (t.xs("table2")["status"] == "unavailable").all()
    # re-reading validates the file against its schema
    assert len(tables.read(L.final_eval("base", "base"), "final_eval")) == len(out)


def test_unknown_metric_is_a_config_error(base_eval):
    from opgrpo_stages.stages.final_eval import final_eval_paths

    bad = C.deep_merge(base_eval, {"eval": {"metrics": ["nonsense"]}})
    with pytest.raises(ConfigError, match="nonsense"):
        final_eval(bad, **final_eval_paths(bad, "base", "base"))


def test_t2i_backbone_that_cannot_encode_is_unavailable(base_eval):
    """Models configured (fake detector), but the embedded backbone cannot encode free text."""
    from opgrpo_stages.stages.final_eval import final_eval_paths

    cfg = C.deep_merge(base_eval, {"eval": {"metrics": [], "t2i_compbench": {"categories": ["numeracy"]}},
                                   "reward": {"options": {"t2i_compbench": {"detector": "embedded"}}}})
    out = final_eval(cfg, **final_eval_paths(cfg, "base", "base"))["table"].set_index(["table", "metric"])
    assert "cannot encode the benchmark prompts" in out.loc[("table2", "numeracy"), "reason"]


def _final(model, checkpoint, k, table1: dict, table2: dict):
    rows = []
    for tab, vals in (("table1", table1), ("table2", table2)):
        for m, v in vals.items():
            ok = not isinstance(v, str)
            rows.append({"model": model, "checkpoint": checkpoint, "iteration": k, "table": tab, "metric": m,
                         "value": float(v) if ok else math.nan, "status": "ok" if ok else "unavailable",
                         "reason": "" if ok else v, "n_images": 4 if ok else 0})
    return pd.DataFrame(rows)


def test_paper_tables_layout(tmp_path, monkeypatch):
    from opgrpo_stages.formats import tables
    from opgrpo_stages.report.tables import paper_tables, write_paper_tables
    from opgrpo_stages.stages.report import outputs_for

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config()
    cats = ["color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex"]
    full = dict(zip(cats, [0.8, 0.6, 0.7, 0.3, 0.4, 0.6, 0.31, 0.35]))
    tables.write(L.final_eval("base", "base"), _final("base", "base", 0, {"GenEval": 0.5, "aesthetic": 5.25},
                                                      full), "final_eval")
    for c, k in (("intermediate", 0), ("best", 1)):
        tables.write(L.final_eval("flowgrpo", c), _final("flowgrpo", c, k, {"GenEval": 0.6 + k / 10,
                                                                            "pickscore": "no model"},
                                                         {**full, "spatial": "no detector"}), "final_eval")
    t1, t2 = paper_tables(cfg, ["flowgrpo"])
    assert list(t1.columns) == ["model", "checkpoint", "step", "GenEval", "Aesthetic", "DeQA", "ImgRwd",
                                "PickScore", "UniRwd"]
    assert list(t1["step"]) == [0, 1, 2] and list(t1["checkpoint"]) == ["base", "intermediate", "best"]
    assert t1.loc[0, "Aesthetic"] == "5.2500" and t1.loc[2, "GenEval"] == "0.7000"
    assert t1.loc[1, "PickScore"] == "unavailable (no model)"
    assert t1.loc[0, "DeQA"] == "unavailable (not in eval.metrics)"
    six = [0.8, 0.6, 0.3, 0.4, 0.6, 0.31]
    assert float(t2.loc[0, "Average"]) == pytest.approx(sum(six) / 6, abs=1e-4)
    assert t2.loc[1, "2D-Spatial"] == "unavailable (no detector)"
    assert t2.loc[1, "Average"].startswith("unavailable (needs")
    assert t2.loc[0, "Texture"] == "0.7000" and t2.loc[0, "Complex"] == "0.3500"
    out = outputs_for("main")
    write_paper_tables(cfg, ["flowgrpo"], out)
    assert pd.read_csv(out["table1_csv"]).shape == (3, 9)
    md = open(out["table2_md"]).read()
    # each reason once, as a numbered note under the table
    assert "| 2D-Spatial |" in md and md.count("no detector") == 1
    n = re.search(r"\[(\d+)\] no detector", md).group(1)
    assert f"unavailable [{n}]" in md.split("\n[")[0]


def test_cli_final_eval_base(base_eval):
    import yaml

    from opgrpo_stages.cli import main
    from opgrpo_stages.formats import tables

    cfg = tiny_config(eval={"metrics": ["brightness"]})
    with open("config.yaml", "w") as f:
        yaml.safe_dump(cfg, f)
    L_path = L.final_eval("base", "base")
    assert main(["final_eval", "--run", "base", "--config", "config.yaml"]) == 0
    df = tables.read(L_path, "final_eval").set_index("metric")
    assert df.loc["brightness", "status"] == "ok"


def test_t2i_category_sampled_and_scored(base_eval, tmp_path_factory, monkeypatch):
    from t2icb_tiny_models import tiny_clip

    from opgrpo_stages.stages import evaluate as E
    from opgrpo_stages.stages.final_eval import final_eval_paths
    from opgrpo_stages.t2i_compbench import T2ICompBench, benchmark_prompts

    clip = tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
    real = E.load_eval_backbone
    monkeypatch.setattr(E, "load_eval_backbone", lambda *a, **k: AnyTextBackbone(real(*a, **k)))
    cfg = C.deep_merge(base_eval, {"eval": {"metrics": [], "t2i_compbench": {
        "categories": ["non_spatial"], "images_per_prompt": 2, "prompts_per_category": 2}},
        "reward": {"options": {"t2i_compbench": {"clip_path": str(clip)}}}})
    out = final_eval(cfg, **final_eval_paths(cfg, "base", "base"))["table"].set_index(["table", "metric"])
    row = out.loc[("table2", "non_spatial")]
    assert row["status"] == "ok" and row["n_images"] == 4
    prompts = benchmark_prompts(["non_spatial"], 2)
    items, images = E.sample_eval_images(cfg, E.load_eval_backbone(cfg), prompts, 2)
    assert [p["prompt"] for p, _ in items] == [prompts[0]["prompt"]] * 2 + [prompts[1]["prompt"]] * 2
    want = T2ICompBench(clip_path=str(clip)).score_category("non_spatial", images, [p["prompt"] for p, _ in items])
    assert row["value"] == pytest.approx(float(np.mean(want)))
    assert out.loc[("table2", "color"), "reason"] == "not in eval.t2i_compbench.categories"
