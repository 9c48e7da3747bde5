"""Model backends of T2I-CompBench++, each loading local weights only (no hub access).

* :class:`BlipVqa`: transformers ``BlipForQuestionAnswering`` + ``BlipProcessor`` from one folder.
* :class:`ClipSimilarity`: transformers ``CLIPModel`` + ``CLIPProcessor`` (upstream: ViT-B/32).
* depth estimators by name (:data:`DEPTH_ESTIMATORS`; ``"dpt"``: transformers
  ``AutoModelForDepthEstimation``, upstream uses DPT-Hybrid); objects come from the detector
  registry of :mod:`opgrpo_stages.geneval.backends` (upstream: UniDet), so any registered detector works.

A missing path raises :class:`~opgrpo_stages.errors.ModelPathError` naming the config key.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import ModelPathError
from ..rewards._models import require_path, to_pil

KEY = "reward.options.t2i_compbench"
_REWARD = "t2i_compbench"  # the config keys are reward.options.t2i_compbench.<key>


class BlipVqa:
    """Probabilities of "yes" and "no" as BLIP's first answer token (upstream ``vqa_prob``; the
    ratio is taken in :func:`..rules.yes_probability`). The question is encoded as transformers'
    ``BlipForQuestionAnswering.generate`` does; upstream's LAVIS BLIP additionally replaces the
    leading [CLS] by its [ENC] token, which the transformers port does not use."""

    def __init__(self, path, *, device: str = "cpu", batch_size: int = 16, key: str = "vqa_path"):
        import torch
        from transformers import BlipForQuestionAnswering, BlipProcessor

        p = require_path(_REWARD, path, "a local folder with the BLIP VQA model and processor "
                                        "(e.g. Salesforce/blip-vqa-base)", key)
        self.processor = BlipProcessor.from_pretrained(p, local_files_only=True)
        self.model = BlipForQuestionAnswering.from_pretrained(p, local_files_only=True).to(device).eval()
        self.device, self.batch_size, self.torch = device, batch_size, torch
        tok = self.processor.tokenizer
        self.yes_id, self.no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        if tok.unk_token_id in (self.yes_id, self.no_id):
            raise ModelPathError(f"{KEY}.{key}: the tokenizer at {p} has no 'yes'/'no' tokens")

    def answer_probabilities(self, images, questions: list[str]) -> np.ndarray:
        """(N, 2) softmax probabilities of the first answer token being "yes" and "no".

        Questions are batched with others of the same token length: padding changes BLIP's
        outputs slightly, and a score must not depend on which images share a batch."""
        torch, m = self.torch, self.model
        lengths = [len(ids) for ids in self.processor.tokenizer(list(questions))["input_ids"]]
        out = np.zeros((len(questions), 2))
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        with torch.no_grad():
            for idx in groups.values():
                for j in range(0, len(idx), self.batch_size):
                    sel = idx[j:j + self.batch_size]
                    enc = self.processor(images=to_pil([images[i] for i in sel]), text=[questions[i] for i in sel],
                                         return_tensors="pt").to(self.device)
                    vis = m.vision_model(pixel_values=enc["pixel_values"]).last_hidden_state
                    q = m.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                       encoder_hidden_states=vis,
                                       encoder_attention_mask=torch.ones(vis.shape[:-1], dtype=torch.long,
                                                                         device=vis.device))[0]
                    bos = torch.full((len(sel), 1), m.decoder_start_token_id, dtype=torch.long, device=vis.device)
                    logits = m.text_decoder(input_ids=bos, encoder_hidden_states=q,
                                            encoder_attention_mask=enc["attention_mask"]).logits[:, 0, :]
                    prob = torch.softmax(logits.float(), dim=-1)
                    out[sel] = torch.stack([prob[:, self.yes_id], prob[:, self.no_id]], dim=1).cpu().numpy()
        return out


class ClipSimilarity:
    """Cosine of the L2-normalised CLIP image and text embeddings."""

    def __init__(self, path, *, device: str = "cpu", batch_size: int = 32, key: str = "clip_path"):
        import torch

        from ..rewards.clip_rewards import load_clip

        self.model, self.processor = load_clip(_REWARD, path, device=device, key=key)  # upstream: ViT-B/32
        self.device, self.batch_size, self.torch = device, batch_size, torch

    def embeddings(self, images, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalised projected image and text embeddings."""
        torch = self.torch
        im, tx = [], []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.processor(images=to_pil(images[i:i + self.batch_size]), text=texts[i:i + self.batch_size],
                                     return_tensors="pt", padding=True, truncation=True).to(self.device)
                vis = self.model.vision_model(pixel_values=enc["pixel_values"]).pooler_output
                txt = self.model.text_model(input_ids=enc["input_ids"],
                                            attention_mask=enc["attention_mask"]).pooler_output
                im.append(self.model.visual_projection(vis).float().cpu().numpy())
                tx.append(self.model.text_projection(txt).float().cpu().numpy())
        return np.concatenate(im).astype(np.float64), np.concatenate(tx).astype(np.float64)

    def similarity(self, images, texts: list[str]) -> np.ndarray:
        a, b = self.embeddings(images, texts)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        return (a * b).sum(axis=1)


@runtime_checkable
class DepthEstimator(Protocol):
    def depth(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) per-image min-max normalised depth at image size, larger = nearer."""


from ..registry import builder, registrar  # noqa: E402

DEPTH_ESTIMATORS: dict[str, Callable[..., DepthEstimator]] = {}


register_depth = registrar(DEPTH_ESTIMATORS, "depth estimator")
build_depth = builder(DEPTH_ESTIMATORS, "depth estimator")


@register_depth("dpt")
class DptDepth:
    """Relative inverse depth of a transformers depth model (DPT), bilinearly resized to the image
    (align_corners, as upstream) and min-max normalised per image."""

    def __init__(self, path=None, *, device: str = "cpu", batch_size: int = 8, key: str = "depth_path"):
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        p = require_path(_REWARD, path, "a local folder with the depth model (upstream: DPT-Hybrid)", key)
        self.processor = AutoImageProcessor.from_pretrained(p, local_files_only=True)
        self.model = AutoModelForDepthEstimation.from_pretrained(p, local_files_only=True).to(device).eval()
        self.device, self.batch_size, self.torch = device, batch_size, torch

    def depth(self, images):
        torch = self.torch
        images = np.asarray(images)
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                enc = self.processor(images=to_pil(images[i:i + self.batch_size]), return_tensors="pt").to(self.device)
                d = self.model(**enc).predicted_depth.float()
                d = torch.nn.functional.interpolate(d[:, None], size=images.shape[1:3], mode="bilinear",
                                                    align_corners=True)[:, 0]
                lo = d.flatten(1).min(1).values[:, None, None]
                hi = d.flatten(1).max(1).values[:, None, None]
                out.append(((d - lo) / (hi - lo).clamp_min(1e-12)).cpu().numpy())
        return np.concatenate(out).astype(np.float64)
