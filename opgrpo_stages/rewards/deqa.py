"""DeQA-Score image quality (You et al., CVPR 2025), scored as DeQA-Score's / Q-Align's ``Scorer``.

The image is padded to a square with the processor's mean colour, the model reads the prompt
``USER: How would you rate the quality of this image?\\n<image>\\nASSISTANT: The quality of the
image is``, and the next-token logits of the five level words excellent, good, fair, poor, bad
(each its first token without special tokens, as upstream's ``tokenizer(word)[1]`` after BOS) are
softmaxed and dotted with (5, 4, 3, 2, 1): a score in [1, 5].

Loading: ``AutoProcessor`` + ``AutoModelForImageTextToText`` from the local ``path`` (any
transformers vision-language causal LM whose processor takes ``text`` and ``images``, e.g. LLaVA
or Qwen2-VL layouts). The released DeQA-Score-Mix3 checkpoint is an mPLUG-Owl2 model with custom
code; it is not loadable by these classes (``trust_remote_code`` is passed through for models
whose remote code follows the processor/model interface above) -- see docs/rewards.md.

Flow-GRPO's DeQA training reward differs from the official score in two ways, both available
as training-only options (``{jpeg_quality: 75, normalize: true}`` is Flow-GRPO's form):
``jpeg_quality``: images JPEG-encoded at that quality before scoring (flow_grpo ``rewards.py``
encodes at PIL's default 75; the reward server decodes JPEG); ``normalize``: the score divided
by 5, in [0.2, 1] (reward-server ``deqa.py``: ``score / 5``). Unset: the official [1, 5] score on
the raw pixels.
"""

from __future__ import annotations

import numpy as np

from .base import Reward, register_reward
from ._models import batches, check_images, require_path

LEVELS = ("excellent", "good", "fair", "poor", "bad")
LEVEL_SCORES = (5.0, 4.0, 3.0, 2.0, 1.0)
PROMPT = "USER: How would you rate the quality of this image?\n{image}\nASSISTANT: The quality of the image is"


def expand_to_square(img, fill):
    """Pad a PIL image to a square, centred, with ``fill`` (as upstream's ``expand2square``)."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


@register_reward("deqa")
class DeqaReward(Reward):
    needs = ("images",)
    uses_device = True
    batched = True
    training_only_options = ("jpeg_quality", "normalize")

    def __init__(self, path=None, processor_path=None, device: str = "cpu", batch_size: int = 8,
                 prompt: str = PROMPT, trust_remote_code: bool = False, dtype: str = "float32",
                 jpeg_quality: int | None = None, normalize: bool = False):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.form = flow_grpo_form(jpeg_quality, normalize)

        model_dir = require_path("deqa", path, "a vision-language model directory (config.json + weights)")
        proc_dir = require_path("deqa", processor_path if processor_path is not None else path,
                                "the model's processor directory", "processor_path")
        self.processor = AutoProcessor.from_pretrained(proc_dir, local_files_only=True,
                                                       trust_remote_code=trust_remote_code)
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=trust_remote_code,
            dtype=getattr(torch, dtype)).eval().to(device)
        tok = self.processor.tokenizer
        ids = []
        for w in LEVELS:
            enc = tok(w, add_special_tokens=False).input_ids
            if not enc or enc[0] == tok.unk_token_id:
                from ..errors import ModelPathError

                raise ModelPathError(f"reward.options.deqa.path: the tokenizer has no token for the level word {w!r}")
            ids.append(enc[0])
        self.level_ids = ids
        self.prompt = prompt.format(image=getattr(self.processor, "image_token", "<image>"))
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.fill = tuple(int(m * 255) for m in mean)
        self.device, self.batch_size = device, batch_size
        self.weights = torch.tensor(LEVEL_SCORES, dtype=torch.float64)

    def level_probs(self, images: np.ndarray):
        """(N, 5) float64 softmax over the level tokens at the prompt's last position."""
        import torch
        from PIL import Image

        out = []
        for s in batches(len(images), self.batch_size):
            pil = [expand_to_square(Image.fromarray(im), self.fill) for im in images[s]]
            inp = self.processor(text=[self.prompt] * len(pil), images=pil, return_tensors="pt", padding=True)
            inp = inp.to(self.device)
            with torch.no_grad():
                logits = self.model(**inp).logits
            mask = inp["attention_mask"]
            last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)  # last real token
            sel = logits[torch.arange(len(pil)), last][:, self.level_ids].double()
            out.append(torch.softmax(sel, -1))  # on the device until every batch is queued (to_host)
        return torch.cat(out).cpu()

    def score(self, images, prompts=None, metadata=None):
        x = self.form.prepare(check_images(images))
        return {"deqa": self.form.finish((self.level_probs(x) @ self.weights).numpy())}


class TrainingForm:
    """The client-side steps of a training reward: a JPEG round trip before scoring, a divisor
    after (both identity by default)."""

    def __init__(self, jpeg_quality: int | None = None, divisor: float = 1.0):
        self.jpeg_quality, self.divisor = jpeg_quality, float(divisor)

    def prepare(self, images):
        if self.jpeg_quality is None:
            return images
        from .geneval import jpeg_roundtrip

        return jpeg_roundtrip(np.asarray(images), self.jpeg_quality)

    def finish(self, scores):
        return np.asarray(scores, np.float64) / self.divisor if self.divisor != 1.0 else np.asarray(scores, np.float64)


def flow_grpo_form(jpeg_quality=None, normalize=False) -> TrainingForm:
    """DeQA's ``jpeg_quality`` / ``normalize`` options (module doc), checked."""
    from .geneval import check_jpeg_quality

    check_jpeg_quality("deqa", jpeg_quality)
    if not isinstance(normalize, bool):
        raise ValueError(f"reward.options.deqa.normalize: {normalize!r}; expected true (Flow-GRPO: score / 5) or false")
    return TrainingForm(jpeg_quality, 5.0 if normalize else 1.0)
