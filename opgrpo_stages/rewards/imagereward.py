"""ImageReward (Xu et al., NeurIPS 2023) from its released checkpoint, on transformers' BLIP classes.

Supported: the released ``ImageReward.pt`` layout -- a state dict with ``blip.visual_encoder.*``
(BLIP's timm-style ViT), ``blip.text_encoder.*`` (BLIP's BERT with cross-attention) and
``mlp.layers.{0,2,4,6,7}.*`` (768->1024->128->64->16->1, dropouts between). The ViT is loaded
into ``BlipVisionModel`` by renaming keys (same tensors, fused qkv included), the text encoder
into ``BlipTextModel`` (same names); sizes are read off the tensors (heads = width / 64, as
BLIP ViT-L and BERT-base). Other keys of the file (e.g. projections) are unused by the score.

Score, as ``ImageReward.score``: prompt tokenised by BERT (``bert-base-uncased`` tokenizer from
``tokenizer_path``; padding to 35 tokens, truncated), image resized (bicubic, shorter side) and
centre-cropped to the ViT's input size, normalised with CLIP's mean/std; the text encoder reads
the prompt with cross-attention on all ViT tokens; the [CLS] state goes through the MLP; reward
= (mlp - 0.16717362830052426) / 1.0333394966054072.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .base import Reward, register_reward
from ._models import batches, check_images, require_path, to_host

MEAN, STD = 0.16717362830052426, 1.0333394966054072
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TOKENS = 35

_VIT_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def rename_vit_key(key: str) -> str:
    for pat, rep in _VIT_RENAMES:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    raise KeyError(f"unexpected BLIP ViT key {key!r}")


def _sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def build_from_state_dict(sd: dict, heads_dim: int = 64):
    """(BlipVisionModel, BlipTextModel, mlp Sequential) with the checkpoint's tensors loaded."""
    import torch
    from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vit = {rename_vit_key(k): v for k, v in _sub(sd, "blip.visual_encoder.").items()}
    txt = {k: v for k, v in _sub(sd, "blip.text_encoder.").items() if not k.endswith("position_ids")}
    mlp = _sub(sd, "mlp.layers.")
    if not vit or not txt or not mlp:
        raise KeyError("expected blip.visual_encoder.*, blip.text_encoder.* and mlp.layers.* keys")
    width = vit["embeddings.class_embedding"].shape[-1]
    patch = vit["embeddings.patch_embedding.weight"].shape[-1]
    n_patch = vit["embeddings.position_embedding"].shape[1] - 1
    vdepth = 1 + max(int(k.split(".")[2]) for k in vit if k.startswith("encoder.layers."))
    vcfg = BlipVisionConfig(hidden_size=width, intermediate_size=vit["encoder.layers.0.mlp.fc1.weight"].shape[0],
                            num_hidden_layers=vdepth, num_attention_heads=max(width // heads_dim, 1),
                            image_size=int(round(math.sqrt(n_patch))) * patch, patch_size=patch,
                            layer_norm_eps=1e-6, hidden_act="gelu")
    hidden = txt["embeddings.word_embeddings.weight"].shape[1]
    tdepth = 1 + max(int(k.split(".")[2]) for k in txt if k.startswith("encoder.layer."))
    tcfg = BlipTextConfig(vocab_size=txt["embeddings.word_embeddings.weight"].shape[0], hidden_size=hidden,
                          intermediate_size=txt["encoder.layer.0.intermediate.dense.weight"].shape[0],
                          num_hidden_layers=tdepth, num_attention_heads=max(hidden // heads_dim, 1),
                          encoder_hidden_size=txt["encoder.layer.0.crossattention.self.key.weight"].shape[1],
                          max_position_embeddings=txt["embeddings.position_embeddings.weight"].shape[0],
                          layer_norm_eps=1e-12, hidden_act="gelu", bos_token_id=None, sep_token_id=None,
                          pad_token_id=0)
    vision = BlipVisionModel(vcfg)
    vision.load_state_dict(vit, strict=True)
    text = BlipTextModel(tcfg, add_pooling_layer=False)
    text.load_state_dict(txt, strict=True)
    idx = sorted({int(k.split(".")[0]) for k in mlp})
    head = torch.nn.Sequential(*(torch.nn.Linear(mlp[f"{i}.weight"].shape[1], mlp[f"{i}.weight"].shape[0]) for i in idx))
    head.load_state_dict({f"{j}.{w}": mlp[f"{i}.{w}"] for j, i in enumerate(idx) for w in ("weight", "bias")})
    return vision.eval(), text.eval(), head.eval()


def preprocess(image: np.ndarray, size: int):
    """ImageReward's transform: bicubic resize of the shorter side, centre crop, CLIP normalisation."""
    from PIL import Image

    im = Image.fromarray(image).convert("RGB")
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, np.float32) / 255.0
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return x.transpose(2, 0, 1)


@register_reward("imagereward")
class ImageRewardReward(Reward):
    needs = ("images", "prompts")
    uses_device = True
    batched = True

    def __init__(self, path=None, tokenizer_path=None, device: str = "cpu", batch_size: int = 8,
                 checkpoint_name: str = "ImageReward.pt"):
        import torch
        from transformers import AutoTokenizer

        p = require_path("imagereward", path, f"the ImageReward checkpoint ({checkpoint_name} or its directory)")
        ckpt = p / checkpoint_name if p.is_dir() else p
        if not ckpt.is_file():
            from ..errors import ModelPathError

            raise ModelPathError(f"reward.options.imagereward.path: {ckpt} is not a file (expected {checkpoint_name})")
        tok_dir = require_path("imagereward", tokenizer_path, "a BERT tokenizer directory (bert-base-uncased)",
                               "tokenizer_path")
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        sd = torch.load(ckpt, map_location="cpu", weights_only=True)
        self.vision, self.text, self.head = (m.to(device) for m in build_from_state_dict(sd))
        self.size = self.vision.config.image_size
        self.device, self.batch_size = device, batch_size

    def score(self, images, prompts, metadata=None):
        import torch

        x = check_images(images, len(prompts))
        out = []
        with torch.no_grad():
            for s in batches(len(x), self.batch_size):
                pix = torch.from_numpy(np.stack([preprocess(im, self.size) for im in x[s]])).to(self.device)
                img = self.vision(pixel_values=pix).last_hidden_state
                tok = self.tokenizer(list(prompts[s]), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                     return_tensors="pt").to(self.device)
                h = self.text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                              encoder_hidden_states=img,
                              encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long, device=img.device))
                r = self.head(h.last_hidden_state[:, 0, :])[:, 0]
                out.append((r - MEAN) / STD)
        return {"imagereward": to_host(out)}
