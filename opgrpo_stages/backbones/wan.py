"""Wan2.1 text-to-video (T2V 1.3B, the paper's "1.4B") from a local diffusers snapshot.

Video latents (C, F', H/8, W/8) with F' = (F - 1) / 4 + 1, normalised per channel by the VAE's
``latents_mean``/``latents_std``; the transformer gets the umT5 embeddings
(``model.max_sequence_length`` tokens, Wan: 512, zero-padded after the prompt). Sigmas and
timesteps: the snapshot's UniPC scheduler as WanPipeline sets it up (flow sigmas with its
``flow_shift``; the transformer gets UniPC's integer timestep of the step; ``model.schedule``,
DiffusersBackbone.sigmas). ``decode``
returns uint8 frames (N, F, H, W, 3), which the rewards score frame by frame.
"""

from __future__ import annotations

import torch

from .diffusers_base import DiffusersBackbone, TextEncoderBase

WAN_PARTS = {
    "transformer": "config.json",
    "vae": "config.json",
    "scheduler": "scheduler_config.json",
}
WAN_TEXT_PARTS = {"text_encoder": "config.json", "tokenizer": "tokenizer_config.json"}
# Flow-GRPO's LoRA targets for Wan2.1: every attention projection (self- and cross-attention)
WAN_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class WanBackbone(DiffusersBackbone):
    name = "wan"
    what = "Wan2.1 (transformer, vae, scheduler)"
    parts = WAN_PARTS
    lora_targets = WAN_LORA_TARGETS
    embed_fields = ("prompt_embeds",)
    default_size = (240, 416)  # Flow-GRPO's Wan2.1 OCR setting (33 frames)

    def _setup(self, model_cfg: dict, device, prompt_embeddings):
        super()._setup(model_cfg, device, prompt_embeddings)
        self.num_frames = int(model_cfg.get("num_frames") or 33)

    def _load_transformer(self):
        from diffusers import WanTransformer3DModel

        return self._from_pretrained(WanTransformer3DModel, "transformer", self.dtype)

    def _load_vae(self):
        from diffusers import AutoencoderKLWan

        return self._from_pretrained(AutoencoderKLWan, "vae", torch.float32)  # Flow-GRPO keeps it float32

    def _latent_shape(self):
        from ..errors import ConfigError

        cfg = self.vae.config
        t_fac = int(cfg.scale_factor_temporal or 4)
        s_fac = int(cfg.scale_factor_spatial or 8)
        p = self.transformer.config.patch_size
        if (self.num_frames - 1) % t_fac:
            raise ConfigError(f"model.num_frames: {self.num_frames} - 1 must be a multiple of {t_fac}")
        if self.height % (s_fac * p[1]) or self.width % (s_fac * p[2]):
            raise ConfigError(f"model.height/width: {self.height}x{self.width} must be multiples of {s_fac * p[1]}")
        return (int(cfg.z_dim), (self.num_frames - 1) // t_fac + 1, self.height // s_fac, self.width // s_fac)

    def _forward(self, x, t, fields):
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=fields["prompt_embeds"],
                                return_dict=False)[0]

    def _decode_batch(self, latents):
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=latents.dtype, device=latents.device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=latents.dtype, device=latents.device).view(shape)
        video = self.vae.decode(latents * std + mean, return_dict=False)[0]  # (B, 3, F, H, W) in [-1, 1]
        return video.permute(0, 2, 3, 4, 1)  # (B, F, H, W, 3)

    @classmethod
    def text_encoder(cls, model_cfg: dict, device: str = "cpu") -> "WanTextEncoder":
        return WanTextEncoder(model_cfg, device)


class WanTextEncoder(TextEncoderBase):
    """umT5 through ``WanPipeline.encode_prompt`` (no transformer/VAE loaded)."""

    fields = ("prompt_embeds",)

    parts = WAN_TEXT_PARTS
    what = "Wan2.1 (text encoder)"
    default_max_sequence_length = 512

    @staticmethod
    def pipeline_class():
        from diffusers import WanPipeline
        return WanPipeline

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        emb, _ = self.pipe.encode_prompt(prompt=texts, do_classifier_free_guidance=False,
                                         max_sequence_length=self.max_sequence_length, device=self.device)
        return {"prompt_embeds": emb}
