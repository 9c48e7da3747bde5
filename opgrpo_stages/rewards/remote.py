"""Rewards scored by an evaluator server in the tool's own environment (docs/evaluators.md).

``reward.options.<name>.server`` (name: geneval, deqa, t2i_compbench) switches that reward from
in-process to remote; columns are the same as in-process, so every consumer (score, evaluate,
final_eval) is unchanged. The server's identity is kept on the reward and recorded in the tables
the stage writes (:func:`identities`).

The reward's other options are honoured on this path or refused (:data:`REMOTE_OPTIONS`):
geneval's ``jpeg_quality`` (the JPEG round trip, before sending) and ``value`` (strict or
partial, from the returned sub-scores) are applied here; ``detector_channels`` is sent to the
server in the request (it must offer it). deqa's ``jpeg_quality`` and ``normalize`` are applied
here. Any other option (a detector, a model path, thresholds) describes the in-process models and
has no meaning for a server: a ConfigError, not silently dropped.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import Reward

# reward name -> (tool, first column, {sub-score: column})
REMOTE_TOOLS = {
    "geneval": ("geneval", "geneval", {"strict": "geneval_strict"}),
    "deqa": ("deqa", "deqa", {}),
    "t2i_compbench": ("t2i_compbench", "t2i_compbench", {}),
}
# reward -> the options this path honours (the rest of a reward's options configure in-process models)
REMOTE_OPTIONS = {"geneval": ("jpeg_quality", "value", "detector_channels"), "deqa": ("jpeg_quality", "normalize"),
                  "t2i_compbench": ()}
SERVER_KEYS = {"url", "timeout", "connect_timeout", "retries", "backoff", "batch_size", "image_encoding",
               "use_env_proxy", "command", "startup_timeout"}


def make_client(name: str, server: dict):
    from ..evaluators.client import EvaluatorClient

    if name not in REMOTE_TOOLS:
        raise ConfigError(f"reward.options.{name}.server: no evaluator server exists for {name!r} "
                          f"(servers: {sorted(REMOTE_TOOLS)})")
    server = dict(server or {})
    unknown = set(server) - SERVER_KEYS
    if unknown:
        raise ConfigError(f"reward.options.{name}.server: unknown keys {sorted(unknown)}; known: {sorted(SERVER_KEYS)}")
    if not server.get("url"):
        raise ConfigError(f"reward.options.{name}.server.url is not set: the evaluator's base URL "
                          f"(e.g. http://127.0.0.1:18085)")
    tool, _, subs = REMOTE_TOOLS[name]
    kw = {k: v for k, v in server.items() if k not in ("url", "command", "startup_timeout")}
    return EvaluatorClient(name, tool, server["url"], sub_scores=tuple(subs), **kw)


class RemoteReward(Reward):
    """A reward whose scores come from an evaluator server; the health and identity check runs at
    construction (stage start)."""

    needs = ("images", "prompts", "metadata")

    def __init__(self, name: str, server: dict, options: dict | None = None):
        from .deqa import TrainingForm, flow_grpo_form
        from .geneval import check_detector_channels, check_jpeg_quality

        self.name = name
        self.client = make_client(name, server)
        options = dict(options or {})
        refused = sorted(set(options) - set(REMOTE_OPTIONS[name]))
        if refused:
            raise ConfigError(f"reward.options.{name}: {refused} configure the in-process models and cannot be "
                              f"honoured when reward.options.{name}.server is set (the server's own models score); "
                              f"remove them (options honoured with a server: {list(REMOTE_OPTIONS[name])})")
        self.form, self.value = TrainingForm(), "partial"
        try:
            if name == "geneval":
                check_jpeg_quality(name, options.get("jpeg_quality"))
                self.form = TrainingForm(options.get("jpeg_quality"))
                self.value = options.get("value", "partial")
                if self.value not in ("partial", "strict"):
                    raise ValueError(f"reward.options.geneval.value: {self.value!r}; expected 'partial' or 'strict'")
                channels = options.get("detector_channels", "bgr")
                check_detector_channels(channels)
                if channels != "bgr":  # the server's default is GenEval's; only a change is sent
                    self.client.options["detector_channels"] = channels
            elif name == "deqa":
                self.form = flow_grpo_form(options.get("jpeg_quality"), options.get("normalize", False))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.identity = self.client.connect()
        self.last_records: list[dict] = []

    def score(self, images, prompts, metadata) -> dict[str, np.ndarray]:
        _, col, subs = REMOTE_TOOLS[self.name]
        recs = self.client.score(self.form.prepare(np.asarray(images)), list(prompts), list(metadata))
        self.last_records = recs
        out = {col: self.form.finish([r["score"] for r in recs])}
        for sub, c in subs.items():
            out[c] = np.array([r["sub_scores"][sub] for r in recs], np.float64)
        if self.value == "strict":  # the first column is the term's value (stages/score.py)
            out = {"geneval_strict": out["geneval_strict"], **{k: v for k, v in out.items() if k != "geneval_strict"}}
        return out


class RemoteT2ICompBench:
    """Table 2 through a T2I-CompBench++ server: the same ``unavailable`` / ``score_category``
    interface as :class:`opgrpo_stages.t2i_compbench.T2ICompBench`."""

    def __init__(self, server: dict):
        self.client = make_client("t2i_compbench", server)
        self.identity = self.client.connect()
        self.available = dict(self.client.health.get("categories") or {})

    def unavailable(self, category: str) -> str | None:
        why = self.available.get(category, "not served")
        return None if why == "ok" else f"not served by the t2i_compbench evaluator server ({why})"

    def score_category(self, category, images, prompts, metadata=None) -> np.ndarray:
        meta = [{**(m or {}), "category": category} for m in (metadata or [{} for _ in prompts])]
        recs = self.client.score(np.asarray(images), list(prompts), meta)
        return np.array([r["score"] for r in recs], np.float64)


def identities(objs: dict) -> dict:
    """name -> server identity of the remote ones among ``objs`` (rewards or benches)."""
    return {k: v.identity for k, v in objs.items() if getattr(v, "identity", None) is not None}
