"""Stand-in models for the evaluator servers (``--models evaluator_standins:<tool>``): cheap,
deterministic numpy models behind each server's real request handling and scoring code. The
tests compute the same scores in process from the same objects (``*_models`` below)."""

from __future__ import annotations

import zlib

import numpy as np

from opgrpo_stages.world.detect import EmbeddedDetector

IDENTITY = {"checkpoints": {"standin": "0" * 64}, "models": {"standin": "tests/evaluator_standins.py"}}


class WorldDetector:
    """The embedded world's detector (default world): what the in-process geneval reward uses."""

    def __init__(self):
        self.inner = EmbeddedDetector(None)

    def detect(self, images):
        return self.inner.detect(np.stack(list(images)))


def geneval(args):
    return WorldDetector(), None, IDENTITY


class LevelLogits:
    def level_logits(self, images):
        x = np.stack(list(images)).astype(np.float64) / 255.0
        m = x.mean(axis=(1, 2))  # (N, 3) mean colour
        return np.column_stack([4 * m[:, 0], 3 * m[:, 1], 2 * m[:, 2], x.std(axis=(1, 2, 3)), np.full(len(x), 0.5)])


def deqa(args):
    return LevelLogits(), IDENTITY


def _text_vec(t: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(t.encode())).standard_normal(3)


class Vqa:
    def answer_probabilities(self, images, questions):
        out = []
        for im, q in zip(images, questions):
            p = float(np.asarray(im, np.float64).mean() / 255.0) * (1 + zlib.crc32(q.encode()) % 5) / 6
            out.append([p, 1.0 - p])
        return np.array(out)


class Clip:
    def similarity(self, images, texts):
        a = np.stack([np.asarray(im, np.float64).mean(axis=(0, 1)) + 1.0 for im in images])
        b = np.stack([_text_vec(t) for t in texts])
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


class Depth:
    def depth(self, images):
        d = np.asarray(images, np.float64).mean(-1)
        lo, hi = d.min(axis=(1, 2), keepdims=True), d.max(axis=(1, 2), keepdims=True)
        return (d - lo) / np.maximum(hi - lo, 1e-12)


def t2i_compbench_models():
    return {"vqa": Vqa(), "clip": Clip(), "detector": WorldDetector(), "depth": Depth()}


def t2i_compbench(args):
    return t2i_compbench_models(), {}, IDENTITY
