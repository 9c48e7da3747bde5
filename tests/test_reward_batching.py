"""Reward models score images in batches (``reward.batch_size``), with the scores of batch size 1.

Tolerance: a batched forward runs the same float32 maths per image, but matrix kernels may sum in
another order for another batch shape; that moves a float32 activation by a few ulp per layer
(observed max |difference| printed by each test; ~1e-7 here), so scores are compared with
rtol = atol = 1e-5, far below any difference between images (checked non-vacuous by ``np.ptp``).
GenEval's outputs are verdicts computed from discrete colour labels: compared exactly.
"""

import math

import numpy as np
import pytest

from opgrpo_stages.rewards import build_reward

from tiny_reward_models import tiny_clip

TOL = dict(rtol=1e-5, atol=1e-5)
N = 7  # not a multiple of the batch size: a short last batch


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (N, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def prompts():
    words = ["a red cat", "two dogs on a sofa", "a bowl of soup"]
    return [words[i % 3] for i in range(N)]


def _count_calls(obj, name):
    """Wrap ``obj.name`` to record the batch dimension of its first tensor argument."""
    fn, sizes = getattr(obj, name), []

    def wrapped(*a, **kw):
        t = next(v for v in (*a, *kw.values()) if hasattr(v, "shape"))
        sizes.append(int(t.shape[0]))
        return fn(*a, **kw)

    setattr(obj, name, wrapped)
    return sizes


def _check(col, build, forward, images, prompts):
    """batch_size 1 vs 3: equal scores; the batched reward runs ceil(N/3) forwards of <= 3 images."""
    one, three = build(1), build(3)
    sizes = forward(three)
    a = one.score(images, prompts, None)[col]
    b = three.score(images, prompts, None)[col]
    print(f"{col}: max |bs1 - bs3| = {np.abs(a - b).max():.3g}")
    np.testing.assert_allclose(b, a, **TOL)
    assert np.ptp(a) > 100 * TOL["atol"]  # the images score differently: the comparison is not vacuous
    assert sizes == [3, 3, 1], sizes


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"), projection_dim=16, seed=2)


def test_pickscore_batched_equals_batch_one(clip_dir, images, prompts):
    _check("pickscore", lambda bs: build_reward("pickscore", path=str(clip_dir), batch_size=bs),
           lambda r: _count_calls(r.model, "get_image_features"), images, prompts)


def test_aesthetic_batched_equals_batch_one(tmp_path, images, prompts):
    d = tiny_clip(tmp_path / "l14", projection_dim=768, seed=1)
    _check("aesthetic", lambda bs: build_reward("aesthetic", path=str(d), batch_size=bs),
           lambda r: _count_calls(r.model, "get_image_features"), images, prompts)


def test_imagereward_batched_equals_batch_one(tmp_path, images, prompts):
    from tiny_reward_models import tiny_imagereward

    t = tiny_imagereward(tmp_path / "ir")
    _check("imagereward", lambda bs: build_reward("imagereward", path=str(t["path"]),
                                                  tokenizer_path=str(t["tokenizer_path"]), batch_size=bs),
           lambda r: _count_calls(r.vision, "forward"), images, prompts)


def test_deqa_batched_equals_batch_one(tmp_path, images, prompts):
    from tiny_reward_models import tiny_llava

    d = tiny_llava(tmp_path / "llava")
    _check("deqa", lambda bs: build_reward("deqa", path=str(d), batch_size=bs),
           lambda r: _count_calls(r.model, "forward"), images, prompts)


# ---------------------------------------------------------------- GenEval


def _world_scenes(n=24, seed=0):
    """Rendered scenes of colour, colour-attribute and position prompts, with the embedded detector's
    detections (masks included) and sometimes an object dropped or duplicated, so counts differ."""
    from opgrpo_stages.geneval.backends import build_detector
    from opgrpo_stages.world import WorldSpec, generate_prompts, render_batch

    world = {"object_size": 9}
    spec = WorldSpec.from_dict(world)
    metas = [m for m in generate_prompts(spec, 4 * n, seed=seed) if m["tag"] in ("colors", "color_attr", "position",
                                                                              "counting")][:n]
    imgs = render_batch(spec, metas, seed=seed)
    dets = build_detector("embedded", spec=world).detect(imgs)
    rng = np.random.default_rng(seed)
    for d in dets:
        if d and rng.random() < 0.3:
            d.pop(int(rng.integers(len(d))))
        elif d and rng.random() < 0.3:
            d.append(d[0])
    return world, metas, imgs, dets


class _Oracle:
    """A colour classifier with the batched interface that answers from the detection's own colour,
    recording what it is asked (the old per-image interface answers the same)."""

    def __init__(self):
        self.asked, self.calls = [], 0

    def classify(self, image, detections):
        return [d.color for d in detections]

    def classify_batch(self, requests):
        self.calls += 1
        self.asked += [id(d) for _, dets in requests for d in dets]
        return [[d.color for d in dets] for _, dets in requests]


def test_evaluate_images_batched_colours_equal_per_image_rules():
    """The two-pass scorer (record the colour questions, answer them in one batch, score) gives the
    per-image rule's verdicts, asking each object at most once in a single call."""
    from opgrpo_stages.geneval import rules as G

    for seed in range(3):
        _, metas, imgs, dets = _world_scenes(seed=seed)
        for quirk in (True, False):
            per_image = [G.evaluate_image(m, d, image=im, color_classifier=_Oracle(), flow_grpo_position_quirk=quirk)
                         for m, d, im in zip(metas, dets, imgs)]
            oracle = _Oracle()
            batched = G.evaluate_images(metas, dets, imgs, oracle, flow_grpo_position_quirk=quirk)
            assert batched == per_image
            assert oracle.calls == 1 and len(oracle.asked) == len(set(oracle.asked)) > 0
        assert {s.correct for s in per_image} == {True, False}  # both verdicts occur: not vacuous


def test_geneval_clip_colours_batched_across_images(tmp_path):
    """The CLIP colour classifier runs the crops of all images ``batch_size`` at a time (it ran one
    forward per image before) and the scores equal batch size 1 and the per-image path."""
    from opgrpo_stages.geneval import rules as G
    from opgrpo_stages.stages.score import build_term

    d = tiny_clip(tmp_path / "clip", projection_dim=16, seed=3)
    world, metas, imgs, dets = _world_scenes()

    def reward(bs):
        r = build_reward("geneval", world=world, color_classifier="clip", color_classifier_kwargs={"path": str(d)},
                         batch_size=bs)
        r.detector.detect = lambda images: dets
        return r

    r1, r5 = reward(1), reward(5)
    sizes = _count_calls(r5.color_classifier.model, "get_image_features")
    a, b = r1.score(imgs, None, metas), r5.score(imgs, None, metas)
    for col in ("geneval", "geneval_strict"):
        np.testing.assert_array_equal(a[col], b[col])
    n_crops = sum(sizes)
    assert n_crops > 10 and sizes == [5] * (n_crops // 5) + ([n_crops % 5] if n_crops % 5 else [])
    assert len(sizes) == math.ceil(n_crops / 5) < sum(1 for x in dets if x)  # fewer forwards than images
    # the per-image path (one classify call per image and clause) agrees
    old = [G.evaluate_image(m, x, image=im, color_classifier=r1.color_classifier) for m, x, im in zip(metas, dets, imgs)]
    np.testing.assert_array_equal(a["geneval"], [s.reward for s in old])
    # in a stage, reward.batch_size reaches the model backends unless the reward's options set one
    cfg = {"world": world, "runtime": {"device": "cpu"},
           "reward": {"terms": {"geneval": 1.0}, "batch_size": 6,
                      "options": {"geneval": {"color_classifier": "clip", "color_classifier_kwargs": {"path": str(d)}}}}}
    assert build_term(cfg, "geneval").color_classifier.batch_size == 6
    cfg["reward"]["options"]["geneval"]["batch_size"] = 4
    assert build_term(cfg, "geneval").color_classifier.batch_size == 4


def test_reward_batch_size_reaches_model_rewards(clip_dir):
    from opgrpo_stages.stages.score import build_term

    cfg = {"world": {}, "runtime": {"device": "cpu"},
           "reward": {"terms": {"pickscore": 1.0}, "batch_size": 5, "options": {"pickscore": {"path": str(clip_dir)}}}}
    assert build_term(cfg, "pickscore").batch_size == 5
    cfg["reward"]["options"]["pickscore"]["batch_size"] = 2
    assert build_term(cfg, "pickscore").batch_size == 2
    from opgrpo_stages import config as C

    from conftest import tiny_config

    assert C.resolve_run(tiny_config(), "flowgrpo")["reward"]["batch_size"] == 16  # the schema's default
