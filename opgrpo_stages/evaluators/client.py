"""Client of an evaluator server (protocol: :mod:`.protocol`, docs/evaluators.md).

Every failure is an :class:`EvaluatorError` naming the reward and the URL; the caller writes
nothing, and no score is ever replaced by a default. Requests are bounded: each has a timeout,
each batch at most ``retries`` retries with exponential backoff (connection errors, timeouts and
5xx answers only; a malformed answer is not retried: a misbehaving server stays misbehaving).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from ..errors import OpgrpoError
from . import protocol as P


class EvaluatorError(OpgrpoError, RuntimeError):
    """An evaluator server is unreachable, slow, or answers outside the protocol."""

    def __init__(self, reward: str, url: str, problem: str):
        self.reward, self.url = reward, url
        super().__init__(f"reward {reward!r}: evaluator server {url}: {' '.join(str(problem).split())}")


class _Retryable(Exception):
    pass


class EvaluatorClient:
    def __init__(self, reward: str, tool: str, url: str, *, timeout: float = 600.0, connect_timeout: float = 10.0,
                 retries: int = 2, backoff: float = 1.0, batch_size: int = 32, image_encoding: str = "raw",
                 use_env_proxy: bool = False, sub_scores=()):
        self.reward, self.tool, self.url = reward, tool, url.rstrip("/")
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.retries, self.backoff, self.batch_size = int(retries), float(backoff), int(batch_size)
        self.image_encoding, self.sub_scores = image_encoding, tuple(sub_scores)
        # evaluators usually run beside the stages: ignore http(s)_proxy unless asked
        self._opener = urllib.request.build_opener(*([] if use_env_proxy else [urllib.request.ProxyHandler({})]))
        self.identity: dict | None = None
        self.health: dict = {}

    def error(self, problem) -> EvaluatorError:
        return EvaluatorError(self.reward, self.url, problem)

    def _once(self, method: str, route: str, data: bytes | None, timeout: float):
        req = urllib.request.Request(self.url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read().decode()).get("error", "")
            except Exception:
                msg = ""
            problem = f"{method} {route} answered HTTP {e.code}" + (f": {msg}" if msg else "")
            if e.code >= 500:
                raise _Retryable(problem) from None
            raise self.error(problem) from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            reason = getattr(e, "reason", e)
            raise _Retryable(f"{method} {route} failed ({type(reason).__name__}: {reason}; "
                             f"timeout {timeout:g} s)") from None
        try:
            return json.loads(raw.decode())
        except ValueError:
            raise self.error(f"{method} {route} answered {len(raw)} bytes that are not JSON") from None

    def _request(self, method: str, route: str, body, timeout: float):
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, route, body, timeout)
            except _Retryable as e:
                if attempt == self.retries:
                    raise self.error(f"{e} after {self.retries + 1} attempts") from None
                time.sleep(self.backoff * 2 ** attempt)

    def connect(self) -> dict:
        """Health and identity check (stage start): the server answers, speaks this protocol and
        is the expected tool. Returns its identity."""
        health = self._request("GET", "/v1/health", None, min(self.timeout, self.connect_timeout))
        try:
            self.identity = P.check_identity(health, self.tool)
        except P.ProtocolError as e:
            raise self.error(e) from None
        self.health = health
        return self.identity

    def score(self, images, prompts, metadata) -> list[dict]:
        """One validated record per image, in order."""
        if self.identity is None:
            self.connect()
        n = len(prompts)
        if not (len(images) == n == len(metadata)):
            raise self.error(f"{len(images)} images, {n} prompts, {len(metadata)} metadata")
        step = max(1, min(self.batch_size, int(self.health.get("max_batch") or self.batch_size)))
        out: list[dict] = []
        for s in range(0, n, step):
            ids = [str(i) for i in range(s, min(n, s + step))]
            try:
                body = P.score_request(self.tool, images[s:s + step], prompts[s:s + step], metadata[s:s + step],
                                       ids, self.image_encoding)
            except P.ProtocolError as e:
                raise self.error(e) from None
            resp = self._request("POST", "/v1/score", json.dumps(body).encode(), self.timeout)
            try:
                out += P.check_response(resp, self.tool, ids, self.identity, self.sub_scores)
            except P.ProtocolError as e:
                raise self.error(e) from None
        return out
