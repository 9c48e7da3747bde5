"""GenEval strict rule + Flow-GRPO partial credit on hand-built detections.

Expected rewards are hand-computed from the term list documented in
opgrpo_stages/geneval.py (mean of per-include terms).
"""

import numpy as np
import pytest

from opgrpo_stages.geneval import (DETECTORS, Detection, build_detector, evaluate_image,
                                   filter_detections, relative_position, summarize)
from opgrpo_stages.rewards import REWARDS, Reward, build_reward


def D(label, x=0.0, y=0.0, s=10.0, score=0.95, color="red"):
    return Detection(label=label, score=score, box=(x, y, x + s, y + s), color=color)


def check(meta, dets, correct, reward, **kw):
    r = evaluate_image(meta, dets, **kw)
    assert r.correct is correct, r.reasons
    assert r.reward == pytest.approx(reward)
    assert (not r.reasons) == correct  # every failure says why
    return r


SINGLE = {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"}
TWO = {"tag": "two_object", "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1}],
       "prompt": "a photo of a square and a circle"}
COUNT2 = {"tag": "counting", "include": [{"class": "square", "count": 2}],
          "exclude": [{"class": "square", "count": 3}], "prompt": "a photo of two squares"}
RED = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}],
       "prompt": "a photo of a red square"}
TWO_RED = {"tag": "colors", "include": [{"class": "square", "count": 2, "color": "red"}],
           "prompt": "a photo of two red squares"}
ATTR = {"tag": "color_attr", "include": [{"class": "square", "count": 1, "color": "red"},
                                        {"class": "circle", "count": 1, "color": "blue"}],
        "prompt": "a photo of a red square and a blue circle"}


def POS(rel):
    return {"tag": "position", "include": [{"class": "square", "count": 1},
                                           {"class": "circle", "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of a circle {rel} a square"}


# ---------------------------------------------------------------- single / two


def test_single_object():
    check(SINGLE, [], False, 0.0)
    check(SINGLE, [D("square")], True, 1.0)
    check(SINGLE, [D("circle")], False, 0.0)
    # official rule is ">= count"; the partial credit wants exactly count: 1 - |1-2|/1
    check(SINGLE, [D("square"), D("square", 20)], True, 0.0)
    check(SINGLE, [D("square", score=0.3)], False, 0.0)  # threshold is strict ">"
    check(SINGLE, [D("square", score=0.31)], True, 1.0)


def test_two_object():
    check(TWO, [D("square"), D("circle", 20)], True, 1.0)
    check(TWO, [D("square")], False, 0.5)  # terms [1, 0]
    check(TWO, [D("circle"), D("circle", 20), D("circle", 20, 20)], False, (0 - 1) / 2)  # [0, 1-2]


# ---------------------------------------------------------------- counting


@pytest.mark.parametrize("n,correct,reward", [
    (0, False, 0.0), (1, False, 0.5), (2, True, 1.0),
    (3, False, 0.5),   # exclude: >= 3 squares fails although >= 2 were found
    (4, False, 0.0), (5, False, -0.5),  # upstream term is unclipped
])
def test_counting_exactly_n(n, correct, reward):
    check(COUNT2, [D("square", 11 * i) for i in range(n)], correct, reward)


def test_counting_uses_0_9_threshold_other_tags_0_3():
    dets = [D("square", 0), D("square", 11), D("square", 22, score=0.5)]
    check(COUNT2, dets, True, 1.0)  # the 0.5 one is invisible under the 0.9 cut
    check({**COUNT2, "tag": "two_object"}, dets, False, 0.5)  # same scene, 0.3 cut: 3 squares
    check(COUNT2, [D("square", 0), D("square", 11, score=0.9)], False, 0.5)  # strict ">" 0.9
    check(COUNT2, [D("square", 0), D("square", 11, score=0.91)], True, 1.0)


def test_max_objects_cap():
    dets = [D("square", i, score=0.5 + i / 100) for i in range(20)]
    kept = filter_detections(dets, "single_object")["square"]
    assert len(kept) == 16 and [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)
    assert kept[0].score == pytest.approx(0.69)


# ---------------------------------------------------------------- colours


def test_colors():
    check(RED, [D("square", color="red")], True, 1.0)
    check(RED, [D("square", color="blue")], False, 0.5)  # [1, 0]
    check(RED, [D("circle", color="red")], False, 0.0)   # [0, 0]
    # colour is judged on the most confident object only (official ordering semantics) ...
    check(RED, [D("square", color="red", score=0.9), D("square", 11, color="blue", score=0.5)], True, 0.0)
    check(RED, [D("square", color="blue", score=0.9), D("square", 11, color="red", score=0.5)], False, 0.0)
    # ... and the partial credit wants exactly one square: [1-1, 0] = 0 in both cases


def test_color_of_all_counted_objects():
    check(TWO_RED, [D("square", 0), D("square", 11)], True, 1.0)
    check(TWO_RED, [D("square", 0), D("square", 11, color="blue")], False, 0.75)  # [1, 1/2]
    # an uncounted (3rd, least confident) blue square does not break the strict rule
    dets = [D("square", 0, score=0.9), D("square", 11, score=0.8), D("square", 22, color="blue", score=0.5)]
    check(TWO_RED, dets, True, 0.25)  # [1 - 1/2, 0]


def test_color_attr():
    check(ATTR, [D("square", color="red"), D("circle", 20, color="blue")], True, 1.0)
    check(ATTR, [D("square", color="red"), D("circle", 20, color="red")], False, 0.75)   # [1,1,1,0]
    check(ATTR, [D("square", color="blue"), D("circle", 20, color="blue")], False, 0.75)  # [1,0,1,1]
    check(ATTR, [D("square", color="red")], False, 0.5)  # [1,1,0,0]


def test_color_classifier_backend_is_used():
    class AllBlue:
        def classify(self, image, detections):
            assert image is not None
            return ["blue"] * len(detections)

    img = np.zeros((32, 32, 3), np.uint8)
    check(RED, [D("square", color=None)], False, 0.5, image=img, color_classifier=AllBlue())
    check({**RED, "include": [{**RED["include"][0], "color": "blue"}]}, [D("square", color="red")],
          True, 1.0, image=img, color_classifier=AllBlue())  # classifier wins over Detection.color
    with pytest.raises(ValueError):
        evaluate_image(RED, [D("square", color=None)])


# ---------------------------------------------------------------- position

SQ = (20.0, 10.0)  # square's top-left; both boxes 10 x 10
STEP = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}


def circle_at(rel, d):
    ux, uy = STEP[rel]
    return D("circle", SQ[0] + ux * d, SQ[1] + uy * d)


@pytest.mark.parametrize("rel", list(STEP))
def test_position_margin_edge(rel):
    # 0.1 * (10 + 10) = 2 px shrink; (d - 2) / d > 0.5  <=>  d > 4
    sq = D("square", *SQ)
    for d, ok in [(3.95, False), (4.0, False), (4.05, True), (15.0, True)]:
        c = circle_at(rel, d)
        assert (rel in relative_position(c.box, sq.box)) is ok, (rel, d)
        check(POS(rel), [sq, c], ok, 1.0 if ok else 0.75)
    assert relative_position(circle_at(rel, 3.95).box, sq.box) == set()
    # the quirk-free variant gives a single 0 term for the failed relation: [1, 1, 0]
    check(POS(rel), [sq, circle_at(rel, 3.0)], False, 2 / 3, flow_grpo_position_quirk=False)


def test_position_opposite_side_and_missing_objects():
    sq = D("square", *SQ)
    check(POS("left of"), [sq, circle_at("right of", 12)], False, 0.75)  # [1, 1, 0, 1] upstream quirk
    check(POS("left of"), [circle_at("left of", 12)], False, 1 / 3)      # no target: [0, 1, 0]
    check(POS("left of"), [sq], False, 1 / 3)                             # [1, 0, 0]


def test_relative_position_details():
    a, b = (0, 0, 10, 10), (10, 10, 20, 20)
    assert relative_position(b, a) == {"right of", "below"}  # diagonal: both
    assert relative_position(a, a) == set()
    # margin scales with both boxes: widths 30 + 10 -> 4 px shrink, needs d > 8
    wide = (0.0, 0.0, 30.0, 10.0)  # centre x 15
    assert "right of" not in relative_position((18.0, 0, 28.0, 10), wide)  # centre 23: d = 8
    assert "right of" in relative_position((18.1, 0, 28.1, 10), wide)


# ---------------------------------------------------------------- summary


def test_summarize_mean_of_tag_means():
    s = summarize(["a", "a", "a", "b"], [True, True, False, False])
    assert s["a"] == pytest.approx(2 / 3) and s["b"] == 0.0
    assert s["overall"] == pytest.approx(1 / 3)  # not the pooled 0.5
    with pytest.raises(ValueError):
        summarize(["a"], [True, False])


# ---------------------------------------------------------------- registries


def test_registries():
    assert "embedded" in DETECTORS and "geneval" in REWARDS
    with pytest.raises(ValueError, match="embedded"):
        build_detector("mask2former_typo")
    with pytest.raises(ValueError, match="geneval"):
        build_reward("nope")


def test_geneval_reward_on_rendered_scenes():
    from opgrpo_stages.world import WorldSpec, generate_prompts, render_batch

    world = {"object_size": 9}
    r = build_reward("geneval", detector="embedded", world=world)
    assert isinstance(r, Reward) and r.name == "geneval" and set(r.needs) <= {"images", "prompts", "metadata"}
    spec = WorldSpec.from_dict(world)
    metas = generate_prompts(spec, 12, seed=0)
    imgs = render_batch(spec, metas, seed=0)
    out = r.score(imgs, [m["prompt"] for m in metas], metas)
    assert list(out) == ["geneval", "geneval_strict"]
    assert all(v.dtype == np.float64 and v.shape == (12,) for v in out.values())
    assert np.all(out["geneval"] == 1.0) and np.all(out["geneval_strict"] == 1.0)
    # wrong pairing of images and prompts must lower both
    shuffled = r.score(imgs, None, metas[1:] + metas[:1])
    assert shuffled["geneval"].mean() < 1.0 and shuffled["geneval_strict"].mean() < 1.0
    # the embedded colour classifier can be plugged in instead of detector colours
    r2 = build_reward("geneval", world=world, color_classifier="embedded")
    assert np.all(r2.score(imgs, None, metas)["geneval_strict"] == 1.0)
