"""Synthetic world: spec, prompt generator/parser, renderer, embedded detector."""

import json
import os
from pathlib import Path
from collections import Counter

import numpy as np
import pytest

from opgrpo_stages.geneval.rules import evaluate_image, summarize
from opgrpo_stages.world import (GENEVAL_TAGS, EmbeddedColorClassifier, EmbeddedDetector, WorldSpec,
                                 enumerate_prompt_space, generate_prompts, parse_prompt, render,
                                 render_batch, shape_mask)

SPEC = WorldSpec()
OFFICIAL = str(Path(__file__).resolve().parents[1] / "opgrpo_stages/geneval/data/evaluation_metadata.jsonl")  # shipped copy

# ---------------------------------------------------------------- spec


def test_spec_from_dict_and_back():
    s = WorldSpec.from_dict({"image_size": 40, "counts": [2, 3, 4],
                             "colors": {"red": [255, 0, 0], "blue": [0, 0, 255]}})
    assert s.counts == (2, 3, 4) and s.colors["red"] == (255, 0, 0)
    assert WorldSpec.from_dict(s.to_dict()) == s
    assert hash(WorldSpec.from_dict(None)) == hash(WorldSpec())
    assert SPEC.tags == GENEVAL_TAGS and SPEC.colors["red"] == (220, 40, 40)


def test_spec_rejects_bad_configs():
    with pytest.raises(ValueError, match="objct_size"):
        WorldSpec.from_dict({"objct_size": 9})
    with pytest.raises(ValueError):
        WorldSpec(shapes=("hexagon",))
    with pytest.raises(ValueError):
        WorldSpec(image_size=16, object_size=9, counts=(4,))  # no layout can hold 4 objects
    with pytest.raises(ValueError):
        WorldSpec(counts=(1,))  # "one squares" is not a GenEval counting prompt


# ---------------------------------------------------------------- prompts


def test_generator_is_deterministic_and_balanced():
    a, b = generate_prompts(SPEC, 61, seed=3), generate_prompts(SPEC, 61, seed=3)
    assert a == b and a != generate_prompts(SPEC, 61, seed=4)
    counts = Counter(m["tag"] for m in a)
    assert set(counts) == set(GENEVAL_TAGS) and max(counts.values()) - min(counts.values()) <= 1
    assert [m["tag"] for m in a[:12]] == list(GENEVAL_TAGS) * 2  # round robin: any prefix is balanced


def test_generator_no_duplicates_when_space_allows():
    space = Counter(m["tag"] for m in enumerate_prompt_space(SPEC))
    metas = generate_prompts(SPEC, 120, seed=0)  # 20 per tag: small tags must repeat, big ones not
    for tag in GENEVAL_TAGS:
        prompts = [m["prompt"] for m in metas if m["tag"] == tag]
        assert len(set(prompts)) == min(len(prompts), space[tag]), tag


def test_exclude_prompts_makes_sets_disjoint():
    held = generate_prompts(SPEC, 12, seed=0)  # 2 per tag: every tag keeps some train prompts
    held_set = {m["prompt"] for m in held}
    train = generate_prompts(SPEC, 300, seed=1, exclude_prompts=held_set)
    assert not held_set & {m["prompt"] for m in train}
    with pytest.raises(ValueError, match="single_object"):
        generate_prompts(SPEC, 6, seed=0, exclude_prompts={"a photo of a square", "a photo of a circle",
                                                           "a photo of a triangle"})


def test_prompt_space_matches_geneval_templates():
    space = enumerate_prompt_space(SPEC)
    by_prompt = {m["prompt"]: m for m in space}
    assert len(by_prompt) == len(space)
    assert by_prompt["a photo of a triangle"]["include"] == [{"class": "triangle", "count": 1}]
    assert by_prompt["a photo of three circles"] == {
        "tag": "counting", "include": [{"class": "circle", "count": 3}],
        "exclude": [{"class": "circle", "count": 4}], "prompt": "a photo of three circles"}
    assert by_prompt["a photo of a circle left of a square"]["include"] == [
        {"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]
    assert by_prompt["a photo of a red square and a blue circle"]["include"] == [
        {"class": "square", "count": 1, "color": "red"}, {"class": "circle", "count": 1, "color": "blue"}]
    assert "a photo of a square and a square" not in by_prompt


@pytest.mark.skipif(not os.path.exists(OFFICIAL), reason="official GenEval metadata not available")
def test_metadata_shape_matches_official_file():
    def shape(m):  # key structure, with the values that carry meaning abstracted away
        inc = [tuple(sorted(r)) for r in m["include"]]
        return tuple(m), tuple(inc), tuple(tuple(sorted(r)) for r in m.get("exclude", []))
    with open(OFFICIAL) as f:
        official = [json.loads(line) for line in f]
    ours = {m["tag"]: shape(m) for m in enumerate_prompt_space(SPEC)}
    for m in official:
        assert shape(m) == ours[m["tag"]], m
        if m["tag"] == "counting":
            assert m["exclude"][0]["count"] == m["include"][0]["count"] + 1


def test_parse_prompt_round_trip():
    for m in enumerate_prompt_space(SPEC) + generate_prompts(SPEC, 200, seed=9):
        assert parse_prompt(SPEC, m["prompt"]) == m
    assert parse_prompt(SPEC, "  A photo of   TWO squares ")["include"] == [{"class": "square", "count": 2}]
    for bad in ["a photo of a dog", "a photo of a square and a square", "a photo of five squares",
                "a photo of a purple circle", "a photo of a circle left of a circle"]:
        with pytest.raises(ValueError, match=bad):
            parse_prompt(SPEC, bad)


def test_articles_and_custom_vocabulary():
    spec = WorldSpec(colors={"orange": (250, 140, 0), "blue": (50, 80, 230)}, counts=(2, 4))
    space = enumerate_prompt_space(spec)
    assert "a photo of an orange circle" in {m["prompt"] for m in space}
    assert "a photo of four triangles" in {m["prompt"] for m in space}
    for m in space:
        assert parse_prompt(spec, m["prompt"]) == m


# ---------------------------------------------------------------- render + detect


def test_render_basics_and_determinism():
    metas = generate_prompts(SPEC, 12, seed=0)
    a = render_batch(SPEC, metas, seed=5)
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_batch(SPEC, metas, seed=5))
    assert not np.array_equal(a, render_batch(SPEC, metas, seed=6))
    one = render(SPEC, metas[0], np.random.default_rng(0))
    assert one.shape == (32, 32, 3)


def test_rendered_scenes_pass_strict_geneval():
    spec = WorldSpec(counts=(2, 3, 4))  # crowded scenes too
    metas = generate_prompts(spec, 200, seed=11)
    imgs = render_batch(spec, metas, seed=12)
    dets = EmbeddedDetector(spec).detect(imgs)
    scores = [evaluate_image(m, d) for m, d in zip(metas, dets)]
    acc = np.mean([s.correct for s in scores])
    assert acc >= 0.98, [(m["prompt"], s.reasons) for m, s in zip(metas, scores) if not s.correct][:5]
    assert np.mean([s.reward for s in scores]) >= 0.98
    assert summarize([m["tag"] for m in metas], [s.correct for s in scores])["overall"] >= 0.98
    # exactly the requested objects, each clean (counting needs > 0.9)
    for m, d in zip(metas, dets):
        assert len(d) == sum(r["count"] for r in m["include"])
        assert all(x.score > 0.9 for x in d)


def draw(img, shape, x, y, s, rgb):
    img[y:y + s, x:x + s][shape_mask(shape, s, s)] = rgb
    return img


def blank(n=32):
    return np.zeros((n, n, 3), np.uint8)


def test_detector_objects_touching_the_border():
    img = draw(blank(), "square", 0, 0, 9, SPEC.colors["red"])
    img = draw(img, "circle", 23, 23, 9, SPEC.colors["blue"])
    img = draw(img, "triangle", 0, 22, 10, SPEC.colors["green"])
    dets = EmbeddedDetector(SPEC).detect(img[None])[0]
    got = {(d.label, d.color, d.box) for d in dets}
    assert got == {("square", "red", (0, 0, 9, 9)), ("circle", "blue", (23, 23, 32, 32)),
                   ("triangle", "green", (0, 22, 10, 32))}  # x2/y2 exclusive
    assert all(d.score == pytest.approx(1.0) for d in dets)
    for d in dets:
        side = int(d.box[2] - d.box[0])
        assert d.mask.shape == (32, 32) and d.mask.sum() == shape_mask(d.label, side, side).sum()


def test_detector_same_colour_objects_gap_vs_touching():
    red = SPEC.colors["red"]
    gap = draw(draw(blank(), "square", 2, 5, 9, red), "square", 12, 5, 9, red)  # 1 px gap
    touch = draw(draw(blank(), "square", 2, 5, 9, red), "square", 11, 5, 9, red)  # merged 18 x 9 blob
    dg, dt = EmbeddedDetector(SPEC).detect(np.stack([gap, touch]))
    assert [(d.label, d.box) for d in dg] == [("square", (2, 5, 11, 14)), ("square", (12, 5, 21, 14))]
    assert len(dt) == 1 and dt[0].score < 0.3  # a merged pair is not a confident square


def test_detector_confidence_is_meaningful():
    red = SPEC.colors["red"]
    ragged = draw(blank(), "square", 5, 5, 9, red)
    ragged[5:8, 5:8] = 0  # bite out a corner
    ragged[13, 10:14] = 0
    tiny = draw(blank(), "square", 5, 5, 4, red)  # far too small to be a 9 px object
    noise = blank()
    noise[3, 3] = red
    d_ragged, d_tiny, d_noise, d_empty = EmbeddedDetector(SPEC).detect(np.stack([ragged, tiny, noise, blank()]))
    assert len(d_ragged) == 1 and 0.3 < d_ragged[0].score < 0.9  # kept, but not for counting
    assert all(d.score < 0.3 for d in d_tiny) and d_noise == [] and d_empty == []


def test_colour_classifier_backend():
    img = draw(blank(), "circle", 4, 4, 9, (200, 60, 50))  # off-palette reddish
    dets = EmbeddedDetector(SPEC, annotate_colors=False).detect(img[None])[0]
    assert len(dets) == 1 and dets[0].color is None
    clf = EmbeddedColorClassifier(SPEC)
    assert clf.classify(img, dets) == ["red"]
    dets[0].mask = None  # box-only detections (no mask) still work
    assert clf.classify(img, dets) == ["red"]
