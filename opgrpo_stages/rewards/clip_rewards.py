"""CLIP-based rewards: PickScore and the LAION aesthetic predictor (transformers CLIPModel, local weights).

PickScore (Kirstain et al.; Flow-GRPO ``flow_grpo/pickscore_scorer.py``): a CLIP-H fine-tune;
score = logit_scale.exp() * cos(text, image) with both embeddings L2-normalised. The processor
comes from its own local path (upstream uses the CLIP-ViT-H-14 laion2B processor). Flow-GRPO
trains on score / 26 (``normalize: true``); tables report the raw score.

Aesthetic (LAION improved-aesthetic-predictor v2; Flow-GRPO ``aesthetic_scorer.py``): CLIP
ViT-L/14 image features, L2-normalised, through the shipped MLP head (768->1024->128->64->16->1,
dropouts only between layers, so inference is the composition of the five Linear layers).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .base import Reward, register_reward
from ._models import batches, check_images, pooled, require_path, to_host, to_pil

AESTHETIC_HEAD = Path(__file__).resolve().parent.parent / "data" / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
PICKSCORE_FLOW_GRPO_SCALE = 26.0


def load_clip(reward: str, path, processor_path=None, device: str = "cpu", key: str = "path"):
    """(CLIPModel in eval mode on ``device``, CLIPProcessor) from local directories; errors name
    ``reward.options.<reward>.<key>``."""
    from transformers import CLIPModel, CLIPProcessor

    model_dir = require_path(reward, path, "a CLIP model directory (config.json + weights)", key)
    proc_dir = require_path(reward, processor_path if processor_path is not None else path,
                            "a CLIP processor directory (tokenizer + preprocessor config)", "processor_path")
    model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval().to(device)
    processor = CLIPProcessor.from_pretrained(proc_dir, local_files_only=True)
    return model, processor


def l2n(x):
    return x / x.norm(p=2, dim=-1, keepdim=True)


@register_reward("pickscore")
class PickScoreReward(Reward):
    needs = ("images", "prompts")
    uses_device = True
    batched = True

    def __init__(self, path=None, processor_path=None, device: str = "cpu", batch_size: int = 16,
                 normalize: bool = False):
        self.model, self.processor = load_clip("pickscore", path, processor_path, device)
        self.device, self.batch_size = device, batch_size
        self.scale = 1.0 / PICKSCORE_FLOW_GRPO_SCALE if normalize else 1.0

    def score(self, images, prompts, metadata=None):
        import torch

        x = check_images(images, len(prompts))
        out = []
        with torch.no_grad():
            for s in batches(len(x), self.batch_size):
                img_in = self.processor(images=to_pil(x[s]), return_tensors="pt").to(self.device)
                txt_in = self.processor(text=list(prompts[s]), padding=True, truncation=True, max_length=77,
                                        return_tensors="pt").to(self.device)
                img = l2n(pooled(self.model.get_image_features(pixel_values=img_in["pixel_values"])))
                txt = l2n(pooled(self.model.get_text_features(**txt_in)))
                out.append(self.model.logit_scale.exp() * (img * txt).sum(-1))  # on the device: see to_host
        return {"pickscore": to_host(out) * self.scale}


def aesthetic_head(head_path=None):
    """The LAION v2 MLP head as a torch Sequential (dropouts omitted: identity at inference)."""
    import torch

    p = Path(head_path) if head_path is not None else AESTHETIC_HEAD
    if not p.is_file():
        from ..errors import ModelPathError

        raise ModelPathError(f"reward.options.aesthetic.head_path: {p} is not a file (expected the MLP head .pth)")
    sd = torch.load(p, map_location="cpu", weights_only=True)
    sizes = [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    head = torch.nn.Sequential(*(torch.nn.Linear(i, o) for o, i in sizes))
    head.load_state_dict({f"{k}.{w}": sd[f"layers.{j}.{w}"]
                          for k, j in enumerate((0, 2, 4, 6, 7)) for w in ("weight", "bias")})
    return head.eval()


def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@register_reward("aesthetic")
class AestheticReward(Reward):
    needs = ("images",)
    uses_device = True
    batched = True

    def __init__(self, path=None, processor_path=None, head_path=None, device: str = "cpu", batch_size: int = 16):
        self.model, self.processor = load_clip("aesthetic", path, processor_path, device)
        self.head = aesthetic_head(head_path).to(device)
        dim = self.model.config.projection_dim
        if dim != 768:
            from ..errors import ModelPathError

            raise ModelPathError(f"reward.options.aesthetic.path: CLIP projection_dim is {dim}, the aesthetic head "
                                 "needs CLIP ViT-L/14 features (768)")
        self.device, self.batch_size = device, batch_size

    def score(self, images, prompts=None, metadata=None):
        import torch

        x = check_images(images)
        out = []
        with torch.no_grad():
            for s in batches(len(x), self.batch_size):
                pix = self.processor(images=to_pil(x[s]), return_tensors="pt")["pixel_values"].to(self.device)
                emb = l2n(pooled(self.model.get_image_features(pixel_values=pix)))
                out.append(self.head(emb)[:, 0])
        return {"aesthetic": to_host(out)}
