"""OCR reward: Flow-GRPO's formula, and the default backend end to end on PIL-rendered text."""

import os

import numpy as np
import pytest

from opgrpo_stages.errors import ConfigError
from opgrpo_stages.rewards import build_reward
from opgrpo_stages.rewards.ocr import levenshtein, ocr_reward, target_text


def font(size=40):
    from PIL import ImageFont
    import matplotlib

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
    return ImageFont.truetype(path, size)


def render(text, size=(320, 128)):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((16, 40), text, fill="black", font=font())
    return np.asarray(im)


def test_levenshtein_known_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("helloworld", "helloword") == 1


def test_formula():
    assert target_text('a neon sign saying "Open 24 Hours" at night') == "Open 24 Hours"
    assert target_text('"A" and "B"') == "A"
    # lower-case, spaces removed, containment -> 0
    assert ocr_reward("xx OPEN24hours yy", "Open 24 Hours") == 1.0
    assert ocr_reward("opn 24 hours", "Open 24 Hours") == pytest.approx(1 - 1 / 11)
    # distance is capped at the target's length: long garbage gets 0, never negative
    assert ocr_reward("q" * 50, "abc") == 0.0
    assert ocr_reward("", "abc") == 0.0
    # video frames use plain distance (no containment) as upstream's video scorer
    assert ocr_reward("xabc", "abc", containment=False) == pytest.approx(1 - 1 / 3)


class FakeBackend:
    def __init__(self, texts):
        self.texts = list(texts)

    def read(self, image):
        return self.texts.pop(0)


def test_video_every_4th_frame_mean_of_positive():
    r = build_reward("ocr")
    r.backend = FakeBackend(["cafe", "zzzz", "caf"])  # frames 0, 4, 8 of 9
    video = np.zeros((1, 9, 8, 8, 3), np.uint8)
    out = r.score(video, ['"Cafe"'], None)
    # rewards 1, 0 (dropped: not positive), 0.75 -> mean of [1, 0.75]
    assert out["ocr"][0] == pytest.approx(0.875)
    r.backend = FakeBackend(["zzzz", "yyyy", "xxxx"])
    assert r.score(video, ['"Cafe"'], None)["ocr"][0] == 0.0


def test_bad_options_and_inputs():
    with pytest.raises(ConfigError, match="backend"):
        build_reward("ocr", backend="tesseract")
    r = build_reward("ocr")
    with pytest.raises(ValueError, match="uint8"):
        r.score(np.zeros((1, 8, 8, 3), np.float32), ['"a"'], None)
    with pytest.raises(ValueError, match="prompts"):
        r.score(np.zeros((2, 8, 8, 3), np.uint8), ['"a"'], None)


def test_rapidocr_end_to_end_offline():
    r = build_reward("ocr")  # default backend: rapidocr-onnxruntime, models inside the wheel
    imgs = np.stack([render("Hello World"), render("Cafe"), np.full((128, 320, 3), 255, np.uint8)])
    prompts = ['a poster with the words "Hello World"', 'a shop sign that says "Cake"', 'a sign reading "Cafe"']
    out = r.score(imgs, prompts, None)
    assert [t.replace(" ", "").lower() for t in r.last_texts] == ["helloworld", "cafe", ""]
    # right text -> 1; "cafe" read for target "cake": one substitution of 4 -> 0.75; blank -> 0
    assert out["ocr"].tolist() == pytest.approx([1.0, 0.75, 0.0])
    assert out["ocr_exact"].tolist() == [1.0, 0.0, 0.0]
    # target "Hello Word" is not inside "helloworld": distance 1 over 9 characters
    assert r.score(imgs[:1], ['"Hello Word"'], None)["ocr"][0] == pytest.approx(8 / 9)


def test_paddleocr_backend_reports_missing_package_or_dirs():
    from opgrpo_stages.errors import ModelPathError

    with pytest.raises(ModelPathError, match="paddleocr|det_model_dir"):
        build_reward("ocr", backend="paddleocr")
