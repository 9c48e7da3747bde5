"""Tiny random-initialised reward models of the real architectures, built offline and saved to a
directory so tests load them through the same ``from_pretrained`` path as real weights.

Tokenizers are built in memory (no vocabulary download). Shared with the evaluation tests.
"""

from __future__ import annotations

from pathlib import Path


def clip_tokenizer():
    """A byte-level CLIPTokenizer with no merges: every character is a token."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip(out_dir, *, projection_dim: int = 16, image_size: int = 32, seed: int = 0) -> Path:
    """CLIPModel + CLIPProcessor saved to ``out_dir``; returns it."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out = Path(out_dir)
    tok = clip_tokenizer()
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(out)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim, logit_scale_init_value=2.6592)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # a non-default temperature, so a missing exp() or scale would show
        model.logit_scale.fill_(3.1)
    model.save_pretrained(out)
    return out
