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


DEQA_WORDS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER", "ASSISTANT", ":", "?", "How", "would", "you",
              "rate", "the", "quality", "of", "this", "image", "is", "The", "excellent", "good", "fair", "poor", "bad"]


def word_tokenizer(words, **special):
    """A whitespace word-level fast tokenizer over ``words`` (first four: unk, bos, eos, pad);
    ``special``: extra named special tokens, e.g. ``image_token="<image>"`` (kept whole)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token=words[0], bos_token=words[1], eos_token=words[2],
                                   pad_token=words[3], extra_special_tokens=special)


def tiny_llava(out_dir, *, image_size: int = 32, seed: int = 0) -> Path:
    """LlavaForConditionalGeneration (tiny CLIP vision tower + tiny Llama) and its LlavaProcessor."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    out = Path(out_dir)
    tok = word_tokenizer(DEQA_WORDS, image_token="<image>")
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                   image_token="<image>", num_additional_image_tokens=1).save_pretrained(out)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=image_size, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(DEQA_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                pad_token_id=3, bos_token_id=1, eos_token_id=2),
        image_token_id=DEQA_WORDS.index("<image>"), vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(out)
    return out


IMAGEREWARD_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "two", "dogs", "on", "sofa",
                     "bowl", "of", "soup"]

# transformers BLIP name -> name in the released ImageReward.pt (BLIP's timm-style ViT)
_VIT_ORIGINAL = [
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.", "patch_embed.proj."),
    ("post_layernorm.", "norm."),
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("self_attn.qkv.", "attn.qkv."),
    ("self_attn.projection.", "attn.proj."),
    ("encoder.layers.", "blocks."),
]


def tiny_imagereward(out_dir, *, image_size: int = 32, seed: int = 0) -> dict:
    """A random ImageReward checkpoint in the released layout (``ImageReward.pt``: ``blip.visual_encoder.*``,
    ``blip.text_encoder.*``, ``mlp.layers.{0,2,4,6,7}.*``) plus a BERT tokenizer directory.

    Returns paths and the transformers modules the tensors came from (for recomputation)."""
    import torch
    from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    BertTokenizer(vocab={w: i for i, w in enumerate(IMAGEREWARD_WORDS)}).save_pretrained(tok_dir)
    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=128, intermediate_size=96, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=image_size, patch_size=8,
                                              layer_norm_eps=1e-6, initializer_range=0.2)).eval()
    text = BlipTextModel(BlipTextConfig(vocab_size=len(IMAGEREWARD_WORDS), hidden_size=64, intermediate_size=96,
                                        num_hidden_layers=2, num_attention_heads=1, encoder_hidden_size=128,
                                        max_position_embeddings=40, bos_token_id=None, sep_token_id=None,
                                        pad_token_id=0, initializer_range=0.2), add_pooling_layer=False).eval()
    sizes = [64, 1024, 128, 64, 16, 1]
    mlp = torch.nn.ModuleDict({str(i): torch.nn.Linear(a, b) for i, a, b in zip((0, 2, 4, 6, 7), sizes, sizes[1:])})
    sd = {}
    for k, v in vision.state_dict().items():
        for new, old in _VIT_ORIGINAL:
            k = k.replace(new, old)
        sd["blip.visual_encoder." + k] = v
    sd.update({"blip.text_encoder." + k: v for k, v in text.state_dict().items()})
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    sd.update({"mlp.layers." + k: v for k, v in mlp.state_dict().items()})
    sd["blip.vision_proj.weight"] = torch.zeros(4, 128)  # present in the real file, unused by the score
    torch.save(sd, out / "ImageReward.pt")
    return {"path": out, "tokenizer_path": tok_dir, "vision": vision, "text": text, "mlp": mlp}
