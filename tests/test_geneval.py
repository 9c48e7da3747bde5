"""GenEval strict rule + Flow-GRPO partial credit on hand-built detections.

Expected rewards are hand-computed from the term list documented in
opgrpo_stages/geneval/rules.py (mean of per-include terms).
"""

import numpy as np
import pytest

from opgrpo_stages.geneval.backends import build_detector, detectors
from opgrpo_stages.geneval.rules import Detection, evaluate_image, filter_detections, relative_position, summarize
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
    assert "embedded" in detectors() and "geneval" in REWARDS
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


def test_position_every_counted_object_against_every_target():
    # two circles must both be left of the square; the partial credit sees 2 circles for count 2
    meta = {"tag": "position", "include": [{"class": "square", "count": 1},
                                           {"class": "circle", "count": 2, "position": ["left of", 0]}],
            "prompt": "a photo of two circles left of a square"}
    sq = D("square", *SQ)
    check(meta, [sq, circle_at("left of", 12), circle_at("left of", 30)], True, 1.0)
    # one circle on the wrong side: strict fails; terms [1, 1, 0, 1] (upstream quirk)
    check(meta, [sq, circle_at("left of", 12), circle_at("right of", 12)], False, 0.75)


# ---------------------------------------------------------------- model backends (real benchmark)


def test_masked_crop_pastes_object_over_grey_and_crops_to_box():
    from opgrpo_stages.geneval.models import masked_crop

    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0] = 200
    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:12] = True
    crop = np.asarray(masked_crop(img, Detection("cup", 0.9, (2.0, 3.0, 14.0, 12.0), mask=mask)))
    assert crop.shape == (9, 12, 3)  # box 12 x 9 px
    # inside the mask: the image; outside: GenEval's #999 grey
    assert (crop[2:7, 2:10] == (200, 0, 0)).all()
    assert (crop[0, 0] == 153).all() and (crop[8, 11] == 153).all()
    # no mask: the plain crop
    assert (np.asarray(masked_crop(img, Detection("cup", 0.9, (2.0, 3.0, 14.0, 12.0)))) == (200, 0, 0)).all()


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from tiny_reward_models import tiny_clip

    return tiny_clip(tmp_path_factory.mktemp("clip_color"), projection_dim=16, seed=3)


def test_clip_color_classifier_is_zero_shot_argmax_over_templates(tiny_clip_dir):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from opgrpo_stages.geneval.backends import build_color_classifier
    from opgrpo_stages.geneval.models import COLORS, masked_crop

    clf = build_color_classifier("clip", path=str(tiny_clip_dir))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    dets = [Detection("dog", 0.9, (0, 0, 20, 30)), Detection("dog", 0.8, (10, 5, 48, 40)),
            Detection("bench", 0.7, (3, 3, 40, 44), mask=rng.random((48, 48)) > 0.5)]
    got = clf.classify(img, dets)
    # independent recomputation with CLIPModel's own forward
    m, p = CLIPModel.from_pretrained(tiny_clip_dir).eval(), CLIPProcessor.from_pretrained(tiny_clip_dir)
    expected = []
    for d in dets:
        texts = [t for c in COLORS for t in (f"a photo of a {c} {d.label}", f"a photo of a {c}-colored {d.label}",
                                             f"a photo of a {c} object")]
        with torch.no_grad():
            out = m(**p(text=texts, images=[masked_crop(img, d)], return_tensors="pt", padding=True))
        t = out.text_embeds.reshape(10, 3, -1)  # already L2-normalised per template
        t = t.mean(1)
        t = t / t.norm(dim=-1, keepdim=True)
        expected.append(COLORS[int((out.image_embeds[0] @ t.T).argmax())])
    assert got == expected and all(c in COLORS for c in got)
    assert clf.classify(img, []) == []


def test_geneval_reward_with_clip_color_classifier(tiny_clip_dir):
    from opgrpo_stages.world import WorldSpec, generate_prompts, render_batch

    world = {"object_size": 9}
    spec = WorldSpec.from_dict(world)
    metas = generate_prompts(spec, 6, seed=0)
    imgs = render_batch(spec, metas, seed=0)
    r = build_reward("geneval", world=world, color_classifier="clip",
                     color_classifier_kwargs={"path": str(tiny_clip_dir)})
    out = r.score(imgs, None, metas)
    assert out["geneval"].shape == (6,) and out["geneval_strict"].shape == (6,)
    # prompts without a colour clause never consult the classifier: same verdict as embedded colours
    ref = build_reward("geneval", world=world).score(imgs, None, metas)
    no_color = [not any("color" in q for q in m["include"]) for m in metas]
    assert (out["geneval_strict"][no_color] == ref["geneval_strict"][no_color]).all()


def test_clip_color_classifier_missing_weights():
    from opgrpo_stages.errors import ModelPathError

    with pytest.raises(ModelPathError, match=r"reward\.options\.geneval\.color_classifier_kwargs\.path"):
        build_reward("geneval", world={}, color_classifier="clip")


def test_mask2former_missing_checkpoint_or_mmdet(tmp_path):
    from opgrpo_stages.errors import ModelPathError

    with pytest.raises(ModelPathError, match=r"reward\.options\.geneval\.detector_kwargs\.checkpoint is not set"):
        build_reward("geneval", detector="mask2former")
    ckpt = tmp_path / "m2f.pth"
    ckpt.write_bytes(b"x")
    try:
        import mmdet  # noqa: F401
    except ImportError:
        with pytest.raises(ModelPathError, match="mmdet"):
            build_detector("mask2former", checkpoint=str(ckpt))


def test_mask2former_backend_with_mocked_mmdet(tmp_path, monkeypatch):
    """mmdet is not installable here: a stand-in module checks how the backend calls it and
    converts both result layouts (2.x per-class arrays, 3.x DetDataSample) into Detections."""
    import sys
    import types

    calls = {}
    h, w = 8, 10
    mask = np.zeros((h, w), bool)
    mask[1:3, 2:5] = True

    def init_detector(config, checkpoint, device):
        calls["init"] = (config, checkpoint, device)
        return "model"

    def inference_detector(model, imgs):  # a list in, one result per image out (as mmdet 2.x and 3.x)
        assert isinstance(imgs, list)
        calls.setdefault("batches", []).append(len(imgs))
        calls.setdefault("imgs", []).extend(imgs)
        if calls.get("v3"):
            inst = types.SimpleNamespace(bboxes=np.array([[1.0, 2.0, 5.0, 6.0]]), scores=np.array([0.8]),
                                         labels=np.array([16]), masks=mask[None])
            return [types.SimpleNamespace(pred_instances=_Inst(inst)) for _ in imgs]
        bbox = [np.zeros((0, 5))] * 80
        bbox[0] = np.array([[0.0, 1.0, 4.0, 5.0, 0.95], [2.0, 2.0, 3.0, 3.0, 0.2]])
        segm = [[] for _ in range(80)]
        segm[0] = [mask, ~mask]
        return [(bbox, segm) for _ in imgs]

    mmdet = types.ModuleType("mmdet")
    mmdet.__file__ = str(tmp_path / "mmdet" / "__init__.py")
    apis = types.ModuleType("mmdet.apis")
    apis.init_detector, apis.inference_detector = init_detector, inference_detector
    mmdet.apis = apis
    monkeypatch.setitem(sys.modules, "mmdet", mmdet)
    monkeypatch.setitem(sys.modules, "mmdet.apis", apis)
    ckpt, cfgf = tmp_path / "m2f.pth", tmp_path / "m2f.py"
    ckpt.write_bytes(b"x")
    cfgf.write_text("")
    det = build_detector("mask2former", checkpoint=str(ckpt), config=str(cfgf), device="cuda:0")
    assert calls["init"] == (str(cfgf), str(ckpt), "cuda:0")
    img = np.zeros((1, h, w, 3), np.uint8)
    img[..., 0] = 255  # red in RGB
    (d2,) = det.detect(img)
    assert (calls["imgs"][0][..., 2] == 255).all() and (calls["imgs"][0][..., 0] == 0).all()  # BGR, as mmcv reads
    assert [(d.label, d.score, d.box) for d in d2] == [("person", 0.95, (0.0, 1.0, 4.0, 5.0)),
                                                       ("person", 0.2, (2.0, 2.0, 3.0, 3.0))]
    assert (d2[0].mask == mask).all() and (d2[1].mask == ~mask).all()
    calls["v3"] = True
    (d3,) = det.detect(img)
    assert [(d.label, d.score, d.box) for d in d3] == [("dog", 0.8, (1.0, 2.0, 5.0, 6.0))]
    assert (d3[0].mask == mask).all()
    # batched: batch_size images per inference_detector call, one detection list per image, in order
    calls["batches"] = []
    det5 = build_detector("mask2former", checkpoint=str(ckpt), config=str(cfgf), batch_size=2)
    many = np.repeat(img, 5, axis=0)
    many[:, 0, 0, 0] = np.arange(5)  # tell the images apart
    calls["imgs"] = []
    got = det5.detect(many)
    assert calls["batches"] == [2, 2, 1] and len(got) == 5
    assert [int(im[0, 0, 2]) for im in calls["imgs"]] == list(range(5))  # in order (BGR: red is channel 2)
    # as a reward: Mask2Former's detections carry no colour, so a colour classifier is required up front
    from opgrpo_stages.errors import ConfigError

    with pytest.raises(ConfigError, match=r"reward\.options\.geneval\.color_classifier: the mask2former detector"):
        build_reward("geneval", detector="mask2former", detector_kwargs={"checkpoint": str(ckpt), "config": str(cfgf)})
    # without a config the official one inside the mmdet package is required
    from opgrpo_stages.errors import ModelPathError

    with pytest.raises(ModelPathError, match="mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"):
        build_detector("mask2former", checkpoint=str(ckpt))


class _Inst:
    """Minimal InstanceData stand-in: attributes plus ``in`` for optional fields."""

    def __init__(self, ns):
        self.__dict__.update({k: v for k, v in vars(ns).items() if not k.startswith("__")})

    def __contains__(self, key):
        return key in self.__dict__


# ---------------------------------------------------------------- tie order (issue 13 item 5)


def _official_ascending_argsort(scores):
    """numpy's default argsort as GenEval's pinned numpy 1.23.1 runs it on <= 16 keys: a plain
    insertion sort (equal keys keep their order). Written from that rule, not from our code."""
    idx = []
    for i, s in enumerate(scores):
        j = len(idx)
        while j > 0 and scores[idx[j - 1]] > s:
            j -= 1
        idx.insert(j, i)
    return idx


def _official_kept(detections, tag, threshold=0.3, counting_threshold=0.9, max_objects=16):
    """Official evaluate_image: per class (boxes in detector output order),
    ordering = argsort(scores)[::-1]; keep score > threshold; first max_objects."""
    thr = counting_threshold if tag == "counting" else threshold
    out = {}
    for label in dict.fromkeys(d.label for d in detections):
        boxes = [d for d in detections if d.label == label]
        scores = [float(d.score) for d in boxes]
        ordering = _official_ascending_argsort(scores)[::-1]
        ordering = [i for i in ordering if scores[i] > thr][:max_objects]
        if ordering:
            out[label] = [boxes[i] for i in ordering]
    return out


def _random_detections(rng, tied):
    n = int(rng.integers(0, 17))
    levels = [0.2, 0.5, 0.95, 1.0] if tied else None
    dets = []
    for k in range(n):
        score = float(rng.choice(levels)) if tied else float(rng.uniform(0.0, 1.0))
        dets.append(Detection(label=str(rng.choice(["square", "circle"])), score=score,
                              box=(float(k), 0.0, k + 5.0, 5.0), color=str(rng.choice(["red", "blue"]))))
    return dets


@pytest.mark.parametrize("tied", [True, False])
def test_filter_detections_matches_official_argsort_order(tied):
    """5,000 random detection lists: the kept objects, in order, equal the official ordering rule's
    (with scores tied at a few levels, as the embedded detector's exact 1.0, and untied)."""
    rng = np.random.default_rng(13 + tied)
    differs_first = 0
    for case in range(5000):
        dets = _random_detections(rng, tied)
        tag = "counting" if case % 3 == 0 else "colors"
        want = _official_kept(dets, tag)
        got = filter_detections(dets, tag)
        assert {k: [id(d) for d in v] for k, v in got.items()} == {k: [id(d) for d in v] for k, v in want.items()}
        old = filter_detections(dets, tag, tie_order="first")
        differs_first += any([id(d) for d in old.get(k, [])] != [id(d) for d in v] for k, v in want.items())
    # the other reading ("first emitted first") differs exactly when equal scores are kept
    assert (differs_first > 500) if tied else (differs_first == 0)


def test_tied_scores_strict_verdict_uses_last_emitted_box():
    """A red prompt, two squares both at score 1.0: GenEval counts only the first ordered one,
    i.e. the LAST emitted (red), so the verdict is correct; emission order would say blue."""
    dets = [D("square", 0, score=1.0, color="blue"), D("square", 30, score=1.0, color="red")]
    assert evaluate_image(RED, dets).correct
    assert not evaluate_image(RED, dets, tie_order="first").correct
    with pytest.raises(ValueError, match="tie_order"):
        evaluate_image(RED, dets, tie_order="random")


# ---------------------------------------------------------------- JPEG before the training detector (item 6)


def _upstream_jpeg(image):
    """Flow-GRPO geneval_score + reward server: PIL JPEG at its default quality, decoded as JPEG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue()), formats=["jpeg"]))


def test_geneval_reward_jpeg_roundtrip_as_upstream_and_training_only(monkeypatch):
    from opgrpo_stages.geneval import backends as G
    from opgrpo_stages.stages.score import build_term

    seen = []

    class Recorder:
        def __init__(self, **kw):
            pass

        def detect(self, images):
            seen.append(np.array(images))
            return [[] for _ in images]

    monkeypatch.setitem(G.DETECTORS, "recorder", Recorder)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    meta = [SINGLE, SINGLE]
    build_reward("geneval", detector="recorder", jpeg_quality=75)(images, ["p", "p"], meta)
    build_reward("geneval", detector="recorder")(images, ["p", "p"], meta)
    assert np.array_equal(seen[0], np.stack([_upstream_jpeg(im) for im in images]))
    assert not np.array_equal(seen[0], images) and np.array_equal(seen[1], images)
    # held-out evaluation (official GenEval reads PNG) drops the training-only JPEG step
    cfg = {"world": None, "reward": {"terms": {"geneval": 1.0},
                                     "options": {"geneval": {"detector": "recorder", "jpeg_quality": 75}}}}
    assert build_term(cfg, "geneval").jpeg_quality == 75
    assert build_term(cfg, "geneval", evaluation=True).jpeg_quality is None
    for bad in (0, 101, 7.5, True):
        with pytest.raises(ValueError, match="jpeg_quality"):
            build_reward("geneval", detector="recorder", jpeg_quality=bad)
