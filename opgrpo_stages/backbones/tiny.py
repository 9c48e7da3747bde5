"""The embedded tiny backbone: a small diffusers ``UNet2DModel`` in pixel space (no VAE),
conditioned on a prompt through a rule-based text encoder for the embedded world.

The "text encoder" parses the prompt string with the world's grammar into slots
(object A, object B: shape, colour, count; relation of B to A) and one-hot encodes them;
a small MLP maps that to the UNet's class embedding (added to the time embedding).
The policy is either every weight (``trainable: full``) or a peft LoRA adapter (``lora``).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import backbone_default
from ..errors import ConfigError, ModelPathError
from .base import Backbone

RELATIONS = ("left of", "right of", "above", "below")
DEFAULT_UNET = {
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 16,
    "norm_num_groups": 8,
    "resnet_time_scale_shift": "scale_shift",  # FiLM conditioning: learns the prompt far faster
}


class PromptSlots:
    """Rule-based text encoder: prompt string -> fixed-size float vector."""

    def __init__(self, spec):
        self.spec = spec
        self.shapes = list(spec.shapes)
        self.colors = list(spec.colors)
        self.max_count = max([1, *spec.counts])
        self.slot_dim = len(self.shapes) + len(self.colors) + self.max_count + 1
        self.dim = 2 * self.slot_dim + len(RELATIONS)

    def encode_one(self, prompt: str) -> np.ndarray:
        from ..world import parse_prompt

        meta = parse_prompt(self.spec, prompt)
        vec = np.zeros(self.dim, np.float32)
        for s, obj in enumerate(meta["include"][:2]):
            o = s * self.slot_dim
            vec[o + self.shapes.index(obj["class"])] = 1
            if "color" in obj:
                vec[o + len(self.shapes) + self.colors.index(obj["color"])] = 1
            vec[o + len(self.shapes) + len(self.colors) + obj["count"] - 1] = 1
            vec[o + self.slot_dim - 1] = 1  # slot present
            if "position" in obj:
                vec[2 * self.slot_dim + RELATIONS.index(obj["position"][0])] = 1
        return vec


class TinyFlowModel(nn.Module):
    def __init__(self, image_size: int, cond_dim: int, unet_cfg: dict):
        super().__init__()
        from diffusers import UNet2DModel

        cfg = {**DEFAULT_UNET, **(unet_cfg or {})}
        emb = cfg["block_out_channels"][0] * 4  # the UNet's time-embedding width
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=3, out_channels=3, class_embed_type="identity", **cfg
        )
        self.cond_proj = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))

    def forward(self, x, sigma, cond_vec):
        t = (sigma * 1000.0).expand(x.shape[0]) if sigma.ndim == 0 else sigma * 1000.0
        return self.unet(x, t, class_labels=self.cond_proj(cond_vec)).sample


class TinyUNetBackbone(Backbone):
    name = "tiny_unet"

    def __init__(self, model_cfg: dict, world_cfg: dict):
        from ..world import WorldSpec

        self.spec = WorldSpec.from_dict(world_cfg or {})
        self.encoder = PromptSlots(self.spec)
        self.shift = float(model_cfg.get("shift", 1.0))
        size = self.spec.image_size
        self.latent_shape = (3, size, size)
        with torch.random.fork_rng(devices=[]):  # same random init in every process (no base weights)
            torch.manual_seed(0)
            self.module = TinyFlowModel(size, self.encoder.dim, model_cfg.get("unet") or {})
        weights = model_cfg.get("base_weights")
        if weights:
            self._load_base(weights)
        self._reference = None
        # the reference policy for the KL term: the base weights as loaded
        self._base_snapshot = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.trainable = model_cfg.get("trainable", "full")
        if self.trainable == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            lora = model_cfg.get("lora") or {}
            conf = LoraConfig(
                r=int(lora.get("r") or backbone_default("tiny_unet", "r")),
                lora_alpha=int(lora.get("alpha") or backbone_default("tiny_unet", "alpha")),
                init_lora_weights="gaussian",
                target_modules=list(lora.get("target_modules", ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])),
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(lora.get("seed", 0)))
                self.module.unet = inject_adapter_in_model(conf, self.module.unet)
        elif self.trainable != "full":
            raise ConfigError(f"model.trainable: expected 'full' or 'lora', got {self.trainable!r}")
        for n, p in self.module.named_parameters():
            p.requires_grad_(self.trainable == "full" or "lora_" in n)
        self.module.eval()

    def _load_base(self, path):
        from safetensors.torch import load_file

        if not Path(path).exists():
            raise ModelPathError(
                f"model.base_weights: {path} does not exist; build it with `snakemake {path}` (rule pretrain_base)"
            )
        state = load_file(str(path))
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelPathError(
                f"model.base_weights: {path} does not fit the configured model.unet "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    # -- model --------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[dict]) -> dict[str, torch.Tensor]:
        return {"vec": torch.from_numpy(np.stack([self.encoder.encode_one(p["prompt"]) for p in prompts]))}

    def velocity(self, x, sigma, cond):
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        return self.module(x, sigma, cond["vec"])

    def decode(self, latents):
        x = ((latents.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).numpy()

    def encode_images(self, images) -> torch.Tensor:
        """uint8 (N,H,W,3) -> latents in [-1, 1] (pixel space), for pre-training."""
        x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0

    # -- policy -------------------------------------------------------------------------
    def trainable_parameters(self):
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def reference(self):
        if self.trainable == "lora":
            from peft.tuners.tuners_utils import BaseTunerLayer

            layers = [m for m in self.module.modules() if isinstance(m, BaseTunerLayer)]
            for m in layers:
                m.enable_adapters(False)
            try:
                yield self
            finally:
                for m in layers:
                    m.enable_adapters(True)
        else:
            if self._reference is None:  # the base weights, frozen, loaded once
                self._reference = copy.deepcopy(self.module)
                self._reference.requires_grad_(False)
                self._reference.load_state_dict(self._base_snapshot, strict=True)
            live = self.module
            self.module = self._reference
            try:
                yield self
            finally:
                self.module = live
