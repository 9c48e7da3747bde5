"""T2I-CompBench++: formulas on tiny real-architecture models and hand-built detections."""

import numpy as np
import pytest

from opgrpo_stages.geneval.rules import Detection
from opgrpo_stages.t2i_compbench import CATEGORIES, T2ICompBench, benchmark_prompts, load_prompts
from opgrpo_stages.t2i_compbench import rules as R


def det(label, box, score=1.0):
    return Detection(label=label, score=score, box=tuple(float(v) for v in box))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from t2icb_tiny_models import tiny_blip_vqa, tiny_clip

    root = tmp_path_factory.mktemp("t2icb")
    return {"vqa": tiny_blip_vqa(root / "blip"), "clip": tiny_clip(root / "clip")}


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_prompt_sets_shipped():
    for c in CATEGORIES:
        assert len(load_prompts(c)) == 300, c
    recs = benchmark_prompts(prompts_per_category=2)
    assert len(recs) == 16 and recs[0] == {"id": "t2icb-color-000", "prompt": load_prompts("color")[0],
                                           "category": "color"}


def test_blip_vqa_matches_generate_first_token(tiny_models):
    """Our batched (padded) yes-probability equals the first generated token's distribution of
    BlipForQuestionAnswering.generate, one unpadded question at a time."""
    import torch
    from transformers import BlipForQuestionAnswering, BlipProcessor

    from opgrpo_stages.t2i_compbench.backends import BlipVqa

    ims = images(3)
    qs = ["a red bench?", "the brown coat rack on top of a dog?", "a cat?"]
    ours = BlipVqa(tiny_models["vqa"], batch_size=3).answer_probabilities(list(ims), qs)
    model = BlipForQuestionAnswering.from_pretrained(tiny_models["vqa"]).eval()
    proc = BlipProcessor.from_pretrained(tiny_models["vqa"])
    yes, no = proc.tokenizer.convert_tokens_to_ids(["yes", "no"])
    for im, q, row in zip(ims, qs, ours):
        from PIL import Image

        enc = proc(images=Image.fromarray(im), text=q, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=1, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        p = torch.softmax(out.logits[0][0].double(), -1)
        np.testing.assert_allclose(row, [p[yes].item(), p[no].item()], rtol=1e-4)
    # the image score is the product over noun phrases of p(yes) / (p(yes) + p(no))
    bench = T2ICompBench(vqa_path=tiny_models["vqa"])
    prompt = "a red bench and a blue bowl"
    got = bench.score_category("color", ims[:1], [prompt])
    probs = bench.backend("vqa").answer_probabilities([ims[0]] * 2, ["a red bench?", "a blue bowl?"])
    want = np.prod(probs[:, 0] / probs.sum(1))
    np.testing.assert_allclose(got, [want], rtol=1e-10)
    assert 0 < want < probs[0, 0] / probs[0].sum()


def test_clip_similarity_is_the_cosine(tiny_models):
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    ims, texts = images(2, 1), ["a cat on a bench", "photo of a dog"]
    got = T2ICompBench(clip_path=tiny_models["clip"]).score_category("non_spatial", ims, texts)
    model = CLIPModel.from_pretrained(tiny_models["clip"]).eval()
    proc = CLIPProcessor.from_pretrained(tiny_models["clip"])
    with torch.no_grad():
        out = model(**proc(images=[Image.fromarray(i) for i in ims], text=texts, return_tensors="pt", padding=True))
    a = out.image_embeds.double() / out.image_embeds.double().norm(dim=-1, keepdim=True)
    b = out.text_embeds.double() / out.text_embeds.double().norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(got, (a * b).sum(-1).numpy(), rtol=1e-5)
    # = logits_per_image / logit_scale.exp() on the diagonal
    np.testing.assert_allclose(got, out.logits_per_image.diag().numpy() / model.logit_scale.exp().item(), rtol=1e-4)


# -- 2D spatial ------------------------------------------------------------------------------------


@pytest.mark.parametrize("relation, box2, want", [
    ("on the left of", (300, 0, 400, 100), 1.0),       # B right of A: A is left of B
    ("on the left of", (-300, 0, -200, 100), 0.0),
    ("on the right of", (-300, 0, -200, 100), 1.0),
    ("on the top of", (0, 300, 100, 400), 1.0),         # image y grows downward: B below A
    ("on the bottom of", (0, -300, 100, -200), 1.0),
    ("on the left of", (300, 400, 400, 500), 0.0),      # the vertical offset dominates
    ("on the left of", (20, 0, 120, 100), 0.1 / (80 * 100 / (2 * 100 * 100 - 80 * 100))),  # overlap: 0.1/IoU
    ("on the left of", (5, 0, 105, 100), 0.0),           # |dx|=5 > |dy|=0 but IoU = 95/105... see below
    ("next to", (100, 100, 200, 200), 1.0),             # |dx| = 100 < 150
    ("near", (400, 500, 500, 600), 150 / 500),          # both offsets >= 150: 150 / max
    ("on top of", (0, 300, 100, 400), 0.0),             # upstream vocabulary without a rule
])
def test_position_score(relation, box2, want):
    box1 = (0, 0, 100, 100)
    got = R.position_score(relation, box1, box2)
    if relation == "on the left of" and box2[0] == 5:
        iou = R.box_iou(box1, box2)
        assert iou > 0.1
        want = 0.1 / iou
    assert got == pytest.approx(want)


def test_spatial_2d_image_score():
    p = "a girl on the left of a dog"
    rel = R.locality(p)
    o1, o2 = R.spatial_objects(p, rel)
    assert (rel, o1, o2) == ("on the left of", "girl", "dog")
    good = [det("person", (0, 0, 100, 100), 0.9), det("dog", (300, 0, 400, 100), 0.7)]
    assert R.spatial_2d_score(o1, o2, rel, good) == pytest.approx(0.25 * 0.9 + 0.25 * 0.7 + 0.5)
    wrong = [det("person", (300, 0, 400, 100), 0.9), det("dog", (0, 0, 100, 100), 0.9)]
    assert R.spatial_2d_score(o1, o2, rel, wrong) == 0.0        # 0.45 < 0.5 -> 0
    assert R.spatial_2d_score(o1, o2, rel, good[:1]) == 0.0     # one object: 0.225 -> 0
    # the first detection of a label is used, not the best placed one
    first = [det("dog", (-300, 0, -200, 100), 0.8)] + good
    assert R.spatial_2d_score(o1, o2, rel, first) == 0.0
    assert R.spatial_2d_score(o1, o2, rel, []) == 0.0


# -- 3D spatial ------------------------------------------------------------------------------------


def _depth_with(near_box, far_box, shape=(64, 64), transposed=True):
    d = np.full(shape, 0.5)
    for b, v in ((near_box, 1.0), (far_box, 0.0)):
        x1, y1, x2, y2 = b
        if transposed:
            d[x1:x2, y1:y2] = v
        else:
            d[y1:y2, x1:x2] = v
    return d


def test_spatial_3d_rules():
    a, b = (0, 0, 40, 40), (10, 10, 50, 50)   # IoU = 900 / 2300 < 0.5
    iou = R.box_iou(a, b)
    # A nearer than B (larger inverse depth): "in front of" gets IoU / 0.5, "behind" 0
    depth = np.zeros((64, 64))
    depth[0:40, 0:40] = 1.0  # upstream indexes [x, y]; symmetric boxes make it the same here
    assert R.depth_position_score("in front of", a, b, depth) == pytest.approx(iou / 0.5)
    assert R.depth_position_score("behind", a, b, depth) == 0.0
    assert R.depth_position_score("hidden", b, a, depth) == pytest.approx(iou / 0.5)
    # IoU > 0.5: 1 for the right order
    c = (0, 0, 40, 36)
    assert R.box_iou(a, c) > 0.5
    dc = np.zeros((64, 64))
    dc[0:40, 36:40] = 1.0  # only A's extra strip is near: mean depth A > C
    assert R.depth_position_score("in front of", a, c, dc) == 1.0
    # disjoint boxes: 0 whatever the depth
    assert R.depth_position_score("in front of", (0, 0, 10, 10), (20, 20, 30, 30), depth) == 0.0
    # transposed indexing (upstream) vs row-major: a depth map where they disagree
    a2, b2 = (0, 0, 40, 20), (0, 10, 40, 30)
    d_t = _depth_with((0, 0, 40, 20), (0, 20, 40, 30), transposed=True)
    assert R.depth_position_score("in front of", a2, b2, d_t, transposed_depth_boxes=True) > 0
    d_r = np.zeros((64, 64))
    d_r[10:30, 0:40] = 1.0  # row-major: B's rows near -> A behind
    assert R.depth_position_score("in front of", a2, b2, d_r, transposed_depth_boxes=False) == 0.0


def test_spatial_3d_image_score_substring_match_no_floor():
    p = "a dog in front of a desk"
    rel = R.locality(p, R.SPATIAL_3D)
    o1, o2 = R.spatial_objects(p, rel)
    assert (rel, o1, o2) == ("in front of", "dog", "desk")
    depth = np.zeros((64, 64))
    depth[0:40, 0:40] = 1.0
    dets = [det("hot dog", (0, 0, 40, 40), 0.6), det("desk", (10, 10, 50, 50), 0.4)]
    iou = R.box_iou(dets[0].box, dets[1].box)
    assert R.spatial_3d_score(o1, o2, rel, dets, depth) == pytest.approx(0.25 * 0.6 + 0.25 * 0.4 + iou / 0.5 / 2)
    assert R.spatial_3d_score(o1, o2, rel, dets[1:], depth) == pytest.approx(0.1)  # one object, no 0.5 floor


def test_dpt_depth_backend_resizes_and_normalises(tmp_path):
    import torch
    from PIL import Image
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    from opgrpo_stages.t2i_compbench.backends import build_depth
    from t2icb_tiny_models import tiny_dpt

    path = tiny_dpt(tmp_path / "dpt")
    ims = np.random.default_rng(5).integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    got = build_depth("dpt", path=path).depth(ims)
    assert got.shape == (2, 40, 48)
    model = DPTForDepthEstimation.from_pretrained(path).eval()
    proc = DPTImageProcessor.from_pretrained(path)
    for im, g in zip(ims, got):
        with torch.no_grad():
            d = model(**proc(images=Image.fromarray(im), return_tensors="pt")).predicted_depth
        d = torch.nn.functional.interpolate(d[None], size=(40, 48), mode="bilinear", align_corners=True)[0, 0]
        d = d.double().numpy()
        np.testing.assert_allclose(g, (d - d.min()) / (d.max() - d.min()), atol=1e-5)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0)
    with pytest.raises(Exception, match="depth_path"):
        build_depth("dpt", path=None)


# -- numeracy --------------------------------------------------------------------------------------


def test_numeracy_parse_and_score():
    objs = R.numeracy_objects("three peaches, one mouse and two mice")
    assert objs == [("peach", 3), ("mouse", 1), ("mouse", 2)]
    assert R.numeracy_objects("six people gathered for a picnic") == [("person", 6)]
    assert R.numeracy_objects("a chicken, four birds, and four microphones sang a lively tune") == [
        ("chicken", 1), ("bird", 4), ("microphone", 4)]
    objs = R.numeracy_objects("two dogs and a boy")
    assert objs == [("dog", 2), ("boy", 1)]
    dogs = [det("dog", (0, 0, 10, 10)), det("dog", (50, 50, 60, 60))]
    person = [det("person", (20, 20, 30, 30))]
    assert R.numeracy_score(objs, dogs + person) == 1.0
    assert R.numeracy_score(objs, dogs[:1] + person) == 0.75          # dog present, wrong count
    assert R.numeracy_score(objs, dogs) == 0.5                        # boy missing
    # a near-duplicate box of the same label is merged (it would make 3 dogs)
    dup = dogs + [det("dog", (0, 0, 10, 11))] + person
    assert R.numeracy_score(objs, dup) == 1.0
    # ... but not a near-duplicate of another label
    assert len(R.dedupe([det("dog", (0, 0, 10, 10)), det("cat", (0, 0, 10, 10))])) == 2
    # a label containing the name counts as it (upstream renaming)
    assert R.numeracy_score([("dog", 1)], [det("hot dog", (0, 0, 5, 5))]) == 1.0
    assert R.numeracy_score([], dogs) == 0.0


# -- complex and the evaluator ---------------------------------------------------------------------


class _FixedVqa:
    def __init__(self, p):
        self.p = p

    def answer_probabilities(self, images, questions):
        return np.array([[self.p, 1 - self.p]] * len(questions))


class _FixedClip:
    def similarity(self, images, texts):
        return np.full(len(texts), 0.3)


class _ListDetector:
    def __init__(self, dets):
        self.dets = dets

    def detect(self, images):
        return [self.dets for _ in images]


def test_complex_three_in_one():
    from opgrpo_stages.t2i_compbench import complex_splits

    sp, ac = complex_splits()
    spatial_p = "The fluffy cat is on the left of the soft pillow."
    action_p = "The black phone was resting on the brown charger."
    assert R.complex_kind(spatial_p, sp, ac) == "spatial" and R.complex_kind(action_p, sp, ac) == "action"
    both_p = next(p for p in load_prompts("complex") if R.complex_kind(p, sp, ac) == "both")
    dets = [det("cat", (0, 0, 100, 100), 1.0), det("pillow", (300, 0, 400, 100), 1.0)]
    bench = T2ICompBench(backends={"vqa": _FixedVqa(0.8), "clip": _FixedClip(), "detector": _ListDetector(dets)})
    got = bench.score_category("complex", images(3), [spatial_p, action_p, both_p])
    attr_spatial = 0.8 ** len(R.noun_phrases(spatial_p))
    assert got[0] == pytest.approx((1.0 + attr_spatial) / 2)          # cat left of pillow: spatial 1
    assert got[1] == pytest.approx((0.3 + 0.8 ** len(R.noun_phrases(action_p))) / 2)
    o1, o2 = R.complex_spatial_objects(both_p)
    s = R.spatial_2d_score(o1, o2, R.locality(both_p), dets)
    assert got[2] == pytest.approx((0.8 ** len(R.noun_phrases(both_p)) + s + 0.3) / 3)


def test_unavailable_categories_name_the_missing_key(tiny_models):
    bench = T2ICompBench(vqa_path=tiny_models["vqa"])
    assert bench.unavailable("color") is None
    assert "reward.options.t2i_compbench.detector is not set" in bench.unavailable("spatial")
    assert "clip_path is not set" in bench.unavailable("non_spatial")
    assert "depth_path" in T2ICompBench(detector="embedded").unavailable("3d_spatial")
    missing = T2ICompBench(vqa_path="/nonexistent/blip").unavailable("texture")
    assert "/nonexistent/blip" in missing and "does not exist" in missing


def test_reward_registered_and_dispatches_by_category(tiny_models):
    from opgrpo_stages.errors import ModelPathError
    from opgrpo_stages.rewards import build_reward

    with pytest.raises(ModelPathError, match="vqa_path"):
        build_reward("t2i_compbench")
    r = build_reward("t2i_compbench", categories=["color", "non_spatial"], vqa_path=str(tiny_models["vqa"]),
                     clip_path=str(tiny_models["clip"]))
    ims = images(2, 3)
    prompts = ["a red bench and a blue bowl", "a cat on a bench"]
    out = r.score(ims, prompts, [{"category": "color"}, {"category": "non_spatial"}])["t2i_compbench"]
    assert out[0] == pytest.approx(r.bench.score_category("color", ims[:1], prompts[:1])[0])
    assert out[1] == pytest.approx(r.bench.score_category("non_spatial", ims[1:], prompts[1:])[0])
    with pytest.raises(ValueError, match="numeracy"):
        r.score(ims[:1], ["two dogs"], [{"category": "numeracy"}])


class _FixedDepth:
    def __init__(self, d):
        self.d = d

    def depth(self, images):
        return np.stack([self.d] * len(images))


def test_evaluator_wires_detector_and_depth_per_category():
    dets = [det("dog", (0, 0, 40, 40), 0.9), det("desk", (10, 10, 50, 50), 0.8), det("dog", (60, 0, 63, 3), 0.7)]
    depth = np.zeros((64, 64))
    depth[0:40, 0:40] = 1.0
    bench = T2ICompBench(backends={"detector": _ListDetector(dets), "depth": _FixedDepth(depth)})
    ims = images(1)
    s2 = bench.score_category("spatial", ims, ["a dog on the left of a desk"])[0]
    assert s2 == pytest.approx(R.spatial_2d_score("dog", "desk", "on the left of", dets))
    s3 = bench.score_category("3d_spatial", ims, ["a dog in front of a desk"])[0]
    assert s3 == pytest.approx(R.spatial_3d_score("dog", "desk", "in front of", dets, depth)) and s3 > 0.5
    assert bench.score_category("numeracy", ims, ["two dogs and one desk"])[0] == 1.0
    assert bench.score_category("numeracy", ims, ["three dogs"])[0] == 0.5
    # metadata overrides the rule-based parsing
    assert bench.score_category("numeracy", ims, ["three dogs"], [{"objects": [["dog", 2]]}])[0] == 1.0
    got = bench.score(np.concatenate([ims, ims]), ["two dogs", "a dog in front of a desk"],
                      [{"category": "numeracy"}, {"category": "3d_spatial"}])
    assert got == pytest.approx([1.0, s3])
