#!/usr/bin/env python
"""DeQA-Score evaluator server: the released ``zhiyuanyou/DeQA-Score-Mix3`` (mPLUG-Owl2 code,
loaded with ``trust_remote_code`` from a local snapshot) in DeQA-Score's own environment
(servers/requirements-deqa.txt: transformers 4.36).

Score, as DeQA-Score's ``src/evaluate/scorer.py`` ``Scorer``: image padded to a square with the
image processor's mean colour; prompt ``USER: How would you rate the quality of this
image?\\n<|image|>\\nASSISTANT: The quality of the image is`` with the image token index -200
spliced in as ``tokenizer_image_token`` does; the last position's logits of the first token of
excellent, good, fair, poor, bad (``tokenizer(word).input_ids[1]``, after BOS) are softmaxed and
dotted with (5, 4, 3, 2, 1): a score in [1, 5] (upstream in float16; here the softmax is float64).

    python servers/deqa_server.py --model-dir weights/DeQA-Score-Mix3 --port 18086
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serve as S  # noqa: E402

from opgrpo_stages.evaluators import protocol as P  # noqa: E402
from opgrpo_stages.rewards.deqa import LEVEL_SCORES, LEVELS, expand_to_square  # noqa: E402

TOOL = "deqa"
PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "numpy", "Pillow")
PROMPT = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
IMAGE_TOKEN_INDEX = -200


def score_from_level_logits(logits) -> np.ndarray:
    """softmax over the five level logits, dotted with (5, 4, 3, 2, 1)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)) @ np.asarray(LEVEL_SCORES, np.float64)


def load_tokenizer(model_dir):
    """DeQA-Score's tokenizer as upstream loads it (``src/model/builder.py``: ``use_fast=False``),
    before the 7B model: its ``tokenizer_config.json`` (``legacy: false``) makes transformers 4.36
    import protobuf even for the slow tokenizer, which must fail at once with what to install."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, use_fast=False, local_files_only=True)
    except ImportError as e:
        raise S.StartupError(TOOL, f"the tokenizer of {model_dir} cannot load ({' '.join(str(e).split())[:300]}); "
                                   f"install servers/requirements-deqa.txt (it pins protobuf and sentencepiece)") from None


class OfficialDeqa:
    def __init__(self, model_dir, device, dtype="float16"):
        import torch
        from transformers import AutoModelForCausalLM, CLIPImageProcessor

        self.torch, self.device = torch, device
        self.tokenizer = load_tokenizer(model_dir)
        self.image_processor = CLIPImageProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, trust_remote_code=True, attn_implementation="eager", torch_dtype=getattr(torch, dtype),
            local_files_only=True).to(device).eval()
        self.level_ids = [ids[1] for ids in self.tokenizer(list(LEVELS))["input_ids"]]
        self.input_ids = torch.tensor([self.tokenizer_image_token(PROMPT)], device=device)
        self.fill = tuple(int(x * 255) for x in self.image_processor.image_mean)
        self.dtype = getattr(torch, dtype)

    def tokenizer_image_token(self, prompt):
        """mPLUG-Owl2's ``tokenizer_image_token``: chunks around <|image|>, one BOS, -200 between."""
        chunks = [self.tokenizer(c).input_ids if c else [] for c in prompt.split("<|image|>")]
        ids, offset = [], 0
        if chunks and chunks[0] and chunks[0][0] == self.tokenizer.bos_token_id:
            offset = 1
            ids.append(chunks[0][0])
        for k, c in enumerate(chunks):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)  # upstream's separator [-200] * (offset + 1), sliced [offset:]
            ids.extend(c[offset:])
        return ids

    def level_logits(self, images) -> np.ndarray:
        from PIL import Image

        torch = self.torch
        pil = [expand_to_square(Image.fromarray(im), self.fill) for im in images]
        with torch.inference_mode():
            pix = self.image_processor.preprocess(pil, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            logits = self.model(input_ids=self.input_ids.repeat(len(pil), 1), images=pix)["logits"]
        return logits[:, -1, self.level_ids].double().cpu().numpy()


def official_models(args):
    if not args.model_dir or not (Path(args.model_dir) / "config.json").exists():
        raise S.StartupError(TOOL, f"--model-dir {args.model_dir}: expected a local snapshot of "
                                   f"zhiyuanyou/DeQA-Score-Mix3 (config.json, weights, remote code)")
    S.check_gpu(TOOL, args.device)  # PyPI's torch 2.0.1 is a CUDA 11.7 build: no Hopper (sm_90) code
    identity = {"checkpoints": {"deqa_score_mix3": S.sha256_tree(args.model_dir)},
                "models": {"scorer": "zhiyuanyou/DeQA-Score-Mix3"}}
    return OfficialDeqa(args.model_dir, args.device, args.dtype), identity


class DeqaTool:
    name = TOOL

    def __init__(self, model, identity):
        self.model = model
        self.identity = {"tool": TOOL, "name": "DeQA-Score (zhiyuanyou/DeQA-Score) Scorer", "protocol": P.PROTOCOL,
                         "packages": S.package_versions(PACKAGES), **identity}

    def score(self, ids, images, prompts, metadata):
        logits = np.asarray(self.model.level_logits(images), np.float64)
        if logits.shape != (len(ids), len(LEVELS)):
            raise ValueError(f"level logits of shape {logits.shape}, expected {(len(ids), len(LEVELS))}")
        return [P.record(i, s) for i, s in zip(ids, score_from_level_logits(logits))]


def main(argv=None):
    ap = S.parser(TOOL, 18086)
    ap.add_argument("--model-dir", help="local snapshot of zhiyuanyou/DeQA-Score-Mix3")
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args(argv)
    model, identity = S.stand_in(args.models, args) if args.models else official_models(args)
    S.serve(DeqaTool(model, identity), args)


if __name__ == "__main__":
    main()
