"""Tiny random-initialised SD3 and Wan2.1 pipelines, saved as local diffusers directories.

Same classes and directory layout as the released snapshots (stabilityai/stable-diffusion-3.5-medium,
Wan-AI/Wan2.1-T2V-1.3B-Diffusers), with tiny configs, so the real loading path is exercised offline.
Tokenizers are built in memory (a character-level BPE for CLIP, a Unigram vocabulary for T5/umT5)
with ``model_max_length`` set. Seeded: the same call writes the same weights.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 32


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + "'\".,!?-")
    vocab = {tok: i for i, tok in enumerate(specials + chars + [c + "</w>" for c in chars])}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = CLIP_MAX_LENGTH
    return tok


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + "'\".,!?-"]
    pieces += [("\u2581" + w, -1.0) for w in ("a", "the", "of", "and", "photo", "red", "blue", "green")]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.model_max_length = T5_MAX_LENGTH
    return tok


def _clip_encoder(vocab_size: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu")
    return CLIPTextModelWithProjection(cfg).eval()


def build_tiny_sd3(path, seed: int = 0) -> Path:
    """SD3 layout: transformer, vae, scheduler, text_encoder(_2) (CLIP), text_encoder_3 (T5), tokenizers."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    clip_tok = _clip_tokenizer()
    t5_tok = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5305,
    )
    torch.manual_seed(seed + 1)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=_clip_encoder(len(clip_tok), seed + 2), tokenizer=clip_tok,
        text_encoder_2=_clip_encoder(len(clip_tok), seed + 3), tokenizer_2=_clip_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tok,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_wan(path, seed: int = 0) -> Path:
    """Wan2.1 layout: transformer, vae (AutoencoderKLWan), scheduler, text_encoder (umT5), tokenizer."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    path = Path(path)
    tok = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                           latents_std=[1.5, 2.0, 0.8, 1.2])
    torch.manual_seed(seed + 1)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                               num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1)).eval()
    # the released Wan2.1 snapshots ship UniPC with flow sigmas and flow_shift 3.0
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


# -- pytest fixtures (import them into a test module to use them) -----------------------------
try:
    import pytest
except ImportError:  # builders stay usable without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def tiny_sd3_path(tmp_path_factory):
        return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3") / "sd3")

    @pytest.fixture(scope="session")
    def tiny_wan_path(tmp_path_factory):
        return build_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "wan")


def sd3_model_cfg(model_path, **over) -> dict:
    """``model`` config of a tiny SD3 run: 16 px images (8x8 latents)."""
    return {"backbone": "sd3", "path": str(model_path), "trainable": "lora", "base_weights": None, "height": 16,
            "width": 16, "max_sequence_length": 16, "lora": {"r": 4, "alpha": 8}, "dtype": "float32", **over}


def wan_model_cfg(model_path, **over) -> dict:
    """``model`` config of a tiny Wan run: 5 frames of 32x32 (latents 2x4x4)."""
    return {"backbone": "wan", "path": str(model_path), "trainable": "lora", "base_weights": None, "height": 32,
            "width": 32, "num_frames": 5, "max_sequence_length": 16, "lora": {"r": 4, "alpha": 8}, "dtype": "float32",
            **over}
