"""Cost of scoring through an evaluator server (docs/evaluators.md), without the models.

    python benchmarks/evaluator_protocol.py [--size 512] [--batch 32] [--batches 4]

Prints, per image encoding: request bytes per batch, client-side encode and server-side decode
time per batch, and the loopback round trip per batch through the DeQA server program with a
stand-in model that returns constant logits (:func:`constant_deqa`), so the round trip is the
protocol's own cost (HTTP, JSON, base64 or PNG, validation). Multiply by 36 batches for a paper-scale iteration (1152 images).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from opgrpo_stages.evaluators import protocol as P  # noqa: E402
from opgrpo_stages.evaluators.client import EvaluatorClient  # noqa: E402


class _Constant:
    def level_logits(self, images):
        return np.zeros((len(images), 5))


def constant_deqa(args):
    """``--models evaluator_protocol:constant_deqa``: no model cost."""
    return _Constant(), {"checkpoints": {}, "models": {"scorer": "constant (benchmark)"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # smooth images (PNG compresses them as it would generated images, unlike noise)
    yy, xx = np.mgrid[:args.size, :args.size] / args.size
    base = np.stack([yy, xx, (yy + xx) / 2], -1)
    images = [(255 * np.clip(base + 0.05 * rng.standard_normal(3), 0, 1)).astype(np.uint8) for _ in range(args.batch)]
    ids = [str(i) for i in range(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        env = {**os.environ, "PYTHONPATH": str(REPO / "benchmarks")}
        server = subprocess.Popen([sys.executable, str(REPO / "servers" / "deqa_server.py"), "--port", "0", "--device",
                                   "cpu", "--ready-file", str(ready), "--models", "evaluator_protocol:constant_deqa",
                                   "--max-batch", str(args.batch)], env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            url = json.loads(ready.read_text())["url"]
            for enc in ("raw", "png"):
                t = time.perf_counter()
                for _ in range(args.batches):
                    body = json.dumps(P.score_request("deqa", images, ["p"] * args.batch, [{}] * args.batch, ids,
                                                      enc)).encode()
                t_enc = (time.perf_counter() - t) / args.batches
                t = time.perf_counter()
                for _ in range(args.batches):
                    P.parse_request(json.loads(body), "deqa")
                t_dec = (time.perf_counter() - t) / args.batches
                client = EvaluatorClient("deqa", "deqa", url, batch_size=args.batch, image_encoding=enc)
                client.connect()
                t = time.perf_counter()
                for _ in range(args.batches):
                    client.score(images, ["p"] * args.batch, [{}] * args.batch)
                t_rt = (time.perf_counter() - t) / args.batches
                print(f"{enc:>3}: {len(body) / 1e6:6.1f} MB per {args.batch} images of {args.size}px; encode "
                      f"{t_enc:.2f} s, decode {t_dec:.2f} s, loopback round trip {t_rt:.2f} s per batch "
                      f"(x36 per 1152-image iteration: {36 * t_rt:.0f} s)")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
