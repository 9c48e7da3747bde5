"""Stage ``embed_prompts``: encode one prompt set with the model's text encoders, once.

Input: ``runs/prompts/<split>.jsonl``. Output: ``runs/prompts/<split>.embeddings.safetensors``
(formats.prompt_embeddings), keyed by prompt id, plus the negative prompt's embeddings for
classifier-free guidance. Only real backbones (SD3.5: CLIP-L, CLIP-G, T5-XXL; Wan2.1: umT5)
need it; rollout, policy_update and evaluate then load no text encoder at all.
"""

from __future__ import annotations


def embed_prompts(cfg: dict, *, prompts_path, out_embeddings) -> None:
    from ..backbones import backbone_class, uses_prompt_embeddings
    from ..errors import ConfigError
    from ..formats import prompt_embeddings as emb_fmt
    from ..formats import prompts as prompts_fmt
    from .common import log, progress, setup_torch

    setup_torch(cfg)
    mc = cfg["model"]
    if not uses_prompt_embeddings(mc):
        raise ConfigError(f"model.backbone: {mc['backbone']!r} encodes prompts itself; embed_prompts is for the "
                          f"real backbones (sd3, wan)")
    prompts = prompts_fmt.read(prompts_path)
    encoder = backbone_class(mc["backbone"]).text_encoder(mc, cfg["runtime"]["device"])
    negative = mc["negative_prompt"]
    uncond = {k: v[0].cpu().clone() for k, v in encoder.encode([negative]).items()}
    cond = {}
    bs = int(mc["text_batch_size"])
    for lo in progress(range(0, len(prompts), bs), "embed"):
        chunk = prompts[lo: lo + bs]
        out = encoder.encode([p["prompt"] for p in chunk])
        for i, p in enumerate(chunk):
            cond[p["id"]] = {k: v[i].cpu().clone() for k, v in out.items()}  # own storage: safetensors refuses shared
    meta = {"backbone": mc["backbone"], "negative_prompt": negative,
            "prompts": {p["id"]: p["prompt"] for p in prompts}, "model_path": str(mc["path"])}
    emb_fmt.write(out_embeddings, cond, uncond, meta)
    log.info("embed_prompts: %d prompts from %s -> %s", len(prompts), prompts_path, out_embeddings)
