"""Model-based rewards on tiny random-initialised models of the real architectures, loaded from
disk through the real path; each formula is recomputed independently of the reward code."""

import numpy as np
import pytest

from opgrpo_stages.errors import ModelPathError
from opgrpo_stages.rewards import build_reward

from tiny_reward_models import tiny_clip

PROMPTS = ["a red cat", "two dogs on a sofa", "a bowl of soup"]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"), projection_dim=16)


@pytest.fixture(scope="module")
def clip_l14_dir(tmp_path_factory):
    # the aesthetic head needs 768-d projected features, as CLIP ViT-L/14 gives
    return tiny_clip(tmp_path_factory.mktemp("clip768"), projection_dim=768, seed=1)


def clip_forward(model_dir, images, prompts):
    """CLIPModel's own forward (not the reward's code path): normalised embeddings + logits."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    m = CLIPModel.from_pretrained(model_dir).eval()
    p = CLIPProcessor.from_pretrained(model_dir)
    inp = p(text=prompts, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = m(**inp)
    return m, out


@pytest.mark.parametrize("name", ["pickscore", "aesthetic"])
def test_missing_model_names_the_config_key(name, tmp_path):
    with pytest.raises(ModelPathError, match=rf"reward\.options\.{name}\.path is not set"):
        build_reward(name)
    with pytest.raises(ModelPathError, match=rf"reward\.options\.{name}\.path: .*nope does not exist"):
        build_reward(name, path=tmp_path / "nope")


def test_pickscore_is_scaled_cosine(clip_dir, images):
    r = build_reward("pickscore", path=str(clip_dir), processor_path=str(clip_dir), batch_size=2)
    got = r.score(images, PROMPTS, None)["pickscore"]
    m, out = clip_forward(clip_dir, images, PROMPTS)
    img = out.image_embeds.double().numpy()
    txt = out.text_embeds.double().numpy()
    cos = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
    expected = np.exp(3.1) * cos  # the builder sets logit_scale = 3.1
    assert got.dtype == np.float64 and got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, np.diag(out.logits_per_image.double().numpy()), rtol=1e-5, atol=1e-6)
    # Flow-GRPO's training scale
    r26 = build_reward("pickscore", path=str(clip_dir), normalize=True)
    np.testing.assert_allclose(r26.score(images, PROMPTS, None)["pickscore"], expected / 26, rtol=1e-5, atol=1e-6)


def test_shipped_aesthetic_head_checksum():
    from opgrpo_stages.rewards.clip_rewards import AESTHETIC_HEAD, AESTHETIC_HEAD_SHA256, sha256_file

    # value recorded in shared/data/README.md (21dd590f...f1e0) and in data/aesthetic/PROVENANCE.md
    assert AESTHETIC_HEAD_SHA256.startswith("21dd590f") and AESTHETIC_HEAD_SHA256.endswith("f1e0")
    assert sha256_file(AESTHETIC_HEAD) == AESTHETIC_HEAD_SHA256
    assert (AESTHETIC_HEAD.parent / "LICENSE").is_file()


def test_aesthetic_is_shipped_head_on_normalised_features(clip_l14_dir, images):
    import torch
    from opgrpo_stages.rewards.clip_rewards import AESTHETIC_HEAD

    r = build_reward("aesthetic", path=str(clip_l14_dir))
    got = r.score(images, None, None)["aesthetic"]
    _, out = clip_forward(clip_l14_dir, images, PROMPTS)
    x = out.image_embeds.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sd = {k: v.double().numpy() for k, v in torch.load(AESTHETIC_HEAD, map_location="cpu", weights_only=True).items()}
    for i in (0, 2, 4, 6, 7):  # Linear layers only; the dropouts in between are identity at inference
        x = x @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    np.testing.assert_allclose(got, x[:, 0], rtol=1e-4, atol=1e-5)
    assert np.ptp(got) > 0  # the images do get different scores


def test_aesthetic_rejects_non_l14_features(clip_dir):
    with pytest.raises(ModelPathError, match="768"):
        build_reward("aesthetic", path=str(clip_dir))


def test_score_stage_sums_terms_and_sets_device(clip_dir, images):
    from opgrpo_stages.stages.score import build_terms, score_images

    cfg = {"world": {}, "runtime": {"device": "cpu"},
           "reward": {"terms": {"pickscore": 0.5, "brightness": 2.0},
                      "options": {"pickscore": {"path": str(clip_dir)}}}}
    terms = build_terms(cfg)
    assert terms["pickscore"].device == "cpu"
    cols = score_images(cfg, images, PROMPTS, [{}] * 3, terms)
    assert set(cols) == {"pickscore", "brightness", "reward"}
    np.testing.assert_allclose(cols["reward"], 0.5 * cols["pickscore"] + 2.0 * cols["brightness"])


# ---------------------------------------------------------------- DeQA


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from tiny_reward_models import tiny_llava

    return tiny_llava(tmp_path_factory.mktemp("llava"))


def test_deqa_is_expected_level_under_softmax(llava_dir, images):
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from tiny_reward_models import DEQA_WORDS

    r = build_reward("deqa", path=str(llava_dir), batch_size=2)
    got = r.score(images, None, None)["deqa"]
    # independent: the model's own forward, one image at a time, on the image padded to a square
    m = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    p = AutoProcessor.from_pretrained(llava_dir)
    ids = [DEQA_WORDS.index(w) for w in ("excellent", "good", "fair", "poor", "bad")]
    fill = tuple(int(v * 255) for v in p.image_processor.image_mean)
    expected = []
    for im in images:
        h, w = im.shape[:2]
        sq = Image.new("RGB", (max(h, w),) * 2, fill)
        sq.paste(Image.fromarray(im), ((max(h, w) - w) // 2, (max(h, w) - h) // 2))
        text = "USER: How would you rate the quality of this image?\n<image>\nASSISTANT: The quality of the image is"
        with torch.no_grad():
            logits = m(**p(text=[text], images=[sq], return_tensors="pt")).logits[0, -1, ids].double().numpy()
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        expected.append(prob @ np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all((got >= 1) & (got <= 5)) and got.dtype == np.float64


def test_deqa_missing_model():
    with pytest.raises(ModelPathError, match=r"reward\.options\.deqa\.path is not set"):
        build_reward("deqa")


# ---------------------------------------------------------------- ImageReward


def test_imagereward_loads_released_layout_and_matches_formula(tmp_path, images):
    import torch
    from PIL import Image

    from tiny_reward_models import tiny_imagereward

    t = tiny_imagereward(tmp_path / "ir")
    r = build_reward("imagereward", path=str(t["path"]), tokenizer_path=str(t["tokenizer_path"]), batch_size=2)
    got = r.score(images, PROMPTS, None)["imagereward"]
    # independent: images 40x48 -> shorter side to 32 (bicubic): 38x32, centre crop columns 3..35
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    pix = np.stack([((np.asarray(Image.fromarray(im).resize((38, 32), Image.BICUBIC))[:, 3:35] / 255.0 - mean) / std)
                    .transpose(2, 0, 1) for im in images]).astype(np.float32)
    ids = {"a": 5, "red": 6, "cat": 7, "two": 8, "dogs": 9, "on": 10, "sofa": 11, "bowl": 12, "of": 13, "soup": 14}
    rows = [[2] + [ids[w] for w in p.split()] + [3] for p in PROMPTS]  # [CLS] words [SEP], padded to 35
    input_ids = torch.tensor([row + [0] * (35 - len(row)) for row in rows])
    with torch.no_grad():
        img = t["vision"](pixel_values=torch.from_numpy(pix)).last_hidden_state
        h = t["text"](input_ids=input_ids, attention_mask=(input_ids > 0).long(), encoder_hidden_states=img,
                      encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long)).last_hidden_state[:, 0]
        for i in ("0", "2", "4", "6", "7"):
            h = t["mlp"][i](h)
    expected = (h[:, 0].double().numpy() - 0.16717362830052426) / 1.0333394966054072
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the image reaches the score through cross-attention: same prompt, different images differ
    assert np.ptp(r.score(images, [PROMPTS[0]] * 3, None)["imagereward"]) > 1e-6


def test_imagereward_missing_files(tmp_path):
    with pytest.raises(ModelPathError, match=r"reward\.options\.imagereward\.path is not set"):
        build_reward("imagereward")
    with pytest.raises(ModelPathError, match=r"ImageReward\.pt"):
        build_reward("imagereward", path=str(tmp_path), tokenizer_path=str(tmp_path))
