"""Stable Diffusion 3.5 (Medium) from a local diffusers snapshot (``model.path``).

Latents (16, H/8, W/8) in the VAE's scaled space; the transformer gets timestep sigma * 1000,
the CLIP-L + CLIP-G + T5 sequence embeddings and the pooled CLIP embeddings. Text is encoded
once by ``embed_prompts`` with the pipeline's own ``encode_prompt`` (T5 length
``model.max_sequence_length``, Flow-GRPO: 128).
"""

from __future__ import annotations

import torch

from .diffusers_base import DiffusersBackbone, TextEncoderBase

SD3_PARTS = {
    "transformer": "config.json",
    "vae": "config.json",
    "scheduler": "scheduler_config.json",
}
SD3_TEXT_PARTS = {
    "text_encoder": "config.json",
    "text_encoder_2": "config.json",
    "text_encoder_3": "config.json",
    "tokenizer": "tokenizer_config.json",
    "tokenizer_2": "tokenizer_config.json",
    "tokenizer_3": "tokenizer_config.json",
}
# Flow-GRPO's LoRA targets for SD3.5 (joint attention of every block; not attn2)
SD3_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out"]


class SD3Backbone(DiffusersBackbone):
    name = "sd3"
    what = "Stable Diffusion 3.5 (transformer, vae, scheduler)"
    parts = SD3_PARTS
    lora_targets = SD3_LORA_TARGETS
    embed_fields = ("prompt_embeds", "pooled")

    def _load_transformer(self):
        from diffusers import SD3Transformer2DModel

        return self._from_pretrained(SD3Transformer2DModel, "transformer", self.dtype)

    def _load_vae(self):
        from diffusers import AutoencoderKL

        return self._from_pretrained(AutoencoderKL, "vae", torch.float32)  # decode in float32

    def _latent_shape(self):
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.height % factor or self.width % factor:
            from ..errors import ConfigError

            raise ConfigError(f"model.height/width: {self.height}x{self.width} is not a multiple of the VAE factor {factor}")
        return (int(self.transformer.config.in_channels), self.height // factor, self.width // factor)

    def _forward(self, x, t, fields):
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=fields["prompt_embeds"],
                                pooled_projections=fields["pooled"], return_dict=False)[0]

    def _decode_batch(self, latents):
        cfg = self.vae.config
        z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        return self.vae.decode(z, return_dict=False)[0].permute(0, 2, 3, 1)  # (B, H, W, 3) in [-1, 1]

    @classmethod
    def text_encoder(cls, model_cfg: dict, device: str = "cpu") -> "SD3TextEncoder":
        return SD3TextEncoder(model_cfg, device)


class SD3TextEncoder(TextEncoderBase):
    """CLIP-L, CLIP-G and T5-XXL through ``StableDiffusion3Pipeline.encode_prompt`` (no transformer/VAE)."""

    fields = ("prompt_embeds", "pooled")

    parts = SD3_TEXT_PARTS
    what = "Stable Diffusion 3.5 (text encoders)"
    default_max_sequence_length = 256

    @staticmethod
    def pipeline_class():
        from diffusers import StableDiffusion3Pipeline
        return StableDiffusion3Pipeline

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        emb, _, pooled, _ = self.pipe.encode_prompt(
            prompt=texts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": emb, "pooled": pooled}
