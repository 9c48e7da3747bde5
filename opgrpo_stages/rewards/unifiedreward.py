"""UnifiedReward: a vision-language judge served behind an OpenAI-compatible chat-completions API
(e.g. sglang/vLLM serving UnifiedReward-7b-v1.5), after Flow-GRPO's ``unifiedreward_score_sglang``.

Per image: resized to 512x512, sent as a base64 PNG data URL with the rubric below (temperature
0); the reply's first ``Final Score: <1-5>`` is parsed (a reply without one scores 0, as
upstream) and the reward is that score / 5. Standard-library HTTP only. No server is started
here: ``url`` must point at one (e.g. ``http://127.0.0.1:17140/v1``); the constructor checks
that it answers ``GET <url>/models``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ModelPathError
from .base import Reward, register_reward
from ._models import check_images

RUBRIC = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your task is to evaluate "
    "this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with "
    "the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as "
    "described in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including "
    "clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, "
    "assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
SCORE_RE = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")


def parse_score(text: str) -> float | None:
    m = SCORE_RE.search(text or "")
    return float(m.group(1)) if m else None


def png_data_url(image: np.ndarray, size: int | None) -> str:
    from PIL import Image

    im = Image.fromarray(image)
    if size:
        im = im.resize((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@register_reward("unifiedreward")
class UnifiedRewardReward(Reward):
    """Columns: ``unifiedreward`` (score / 5) and ``unifiedreward_parsed`` (1 if the reply had a score)."""

    needs = ("images", "prompts")

    def __init__(self, url: str | None = None, model: str = "UnifiedReward-7b-v1.5", api_key: str = "EMPTY",
                 timeout: float = 120.0, image_size: int | None = 512, max_workers: int = 8,
                 use_env_proxy: bool = False):
        if not url:
            raise ModelPathError("reward.options.unifiedreward.url is not set: the base URL of an OpenAI-compatible "
                                 "server running the UnifiedReward model (e.g. http://127.0.0.1:17140/v1)")
        self.url, self.model, self.api_key = url.rstrip("/"), model, api_key
        self.timeout, self.image_size, self.max_workers = timeout, image_size, max_workers
        # the judge usually runs beside the trainer: ignore http(s)_proxy unless asked
        self._opener = urllib.request.build_opener(*([] if use_env_proxy else [urllib.request.ProxyHandler({})]))
        try:
            self._request("GET", "/models", None, timeout=min(timeout, 10.0))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ModelPathError(f"reward.options.unifiedreward.url: no OpenAI-compatible server answers "
                                 f"GET {self.url}/models ({e})") from e

    def _request(self, method: str, route: str, body, timeout: float):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.api_key}"})
        with self._opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def ask(self, image: np.ndarray, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(image, self.image_size)}},
                {"type": "text", "text": RUBRIC.format(prompt=prompt)},
            ]}],
            "temperature": 0,
        }
        return self._request("POST", "/chat/completions", body, self.timeout)["choices"][0]["message"]["content"]

    def score(self, images, prompts, metadata=None):
        x = check_images(images, len(prompts))
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            self.last_replies = list(pool.map(self.ask, list(x), list(prompts)))
        scores = [parse_score(t) for t in self.last_replies]
        return {"unifiedreward": np.array([0.0 if s is None else s / 5.0 for s in scores], np.float64),
                "unifiedreward_parsed": np.array([s is not None for s in scores], np.float64)}
