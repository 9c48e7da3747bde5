"""T2I-CompBench++ as a reward: each image is scored by the metric of its prompt's category
(``metadata["category"]``); see :mod:`opgrpo_stages.t2i_compbench`."""

from __future__ import annotations

from .base import Reward, register_reward


@register_reward("t2i_compbench")
class T2ICompBenchReward(Reward):
    batched = True  # batch_size goes to T2ICompBench's VQA / CLIP backends
    uses_device = True  # runtime.device goes to every model it builds unless the options set one
    def __init__(self, categories=None, **options):
        """``options``: :class:`opgrpo_stages.t2i_compbench.T2ICompBench` (model paths, detector,
        depth, device). Raises ModelPathError when a model needed by ``categories`` (default all)
        is not configured."""
        from ..errors import ModelPathError
        from ..t2i_compbench import CATEGORIES, T2ICompBench

        self.bench = T2ICompBench(**options)
        self.categories = tuple(categories or CATEGORIES)
        for c in self.categories:
            why = self.bench.unavailable(c)
            if why:
                raise ModelPathError(f"t2i_compbench category {c!r}: {why}")

    def score(self, images, prompts, metadata):
        bad = {m.get("category") for m in metadata} - set(self.categories)
        if bad:
            raise ValueError(f"t2i_compbench: metadata categories {sorted(map(str, bad))} not in {self.categories}")
        return {"t2i_compbench": self.bench.score(images, prompts, metadata)}
