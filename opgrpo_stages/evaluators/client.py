"""Client of an evaluator server (protocol: :mod:`.protocol`, docs/evaluators.md).

Every failure is an :class:`EvaluatorError` naming the reward and the URL; the caller writes
nothing, and no score is ever replaced by a default. Requests are bounded: each has a deadline
for the whole exchange (connect, send, the complete answer: a server trickling bytes cannot
stretch it), each batch at most ``retries`` retries with exponential backoff (connection errors,
timeouts and 5xx answers only; a 4xx or malformed answer is not retried: it would fail again).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
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
        self.use_env_proxy = bool(use_env_proxy)
        self.options: dict = {}  # scoring options sent with every request (the server must list them)
        self.identity: dict | None = None
        self.health: dict = {}

    def error(self, problem) -> EvaluatorError:
        return EvaluatorError(self.reward, self.url, problem)

    def _connection(self, timeout: float):
        """(connection, request target): direct, or through the environment's proxy if asked."""
        u = urllib.parse.urlsplit(self.url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        proxy = urllib.request.getproxies().get(u.scheme) if self.use_env_proxy else None
        if proxy and not urllib.request.proxy_bypass(u.hostname or ""):
            pu = urllib.parse.urlsplit(proxy)
            return http.client.HTTPConnection(pu.hostname, pu.port or 80, timeout=timeout), self.url
        return cls(u.hostname, u.port, timeout=timeout), u.path.rstrip("/")

    def _once(self, method: str, route: str, data: bytes | None, timeout: float):
        """One exchange, all of it within ``timeout`` seconds: at the deadline a timer shuts the
        socket down, which ends any read in progress."""
        conn, base = self._connection(timeout)
        expired, sock = threading.Event(), []

        def expire():
            expired.set()
            for sk in sock:  # the response owns the socket once the headers are read: keep our own handle
                try:
                    sk.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            sock.append(conn.sock)
            if expired.is_set():
                expire()
            conn.request(method, base + route, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, cut at the deadline
            why = f"timed out: no complete answer within {timeout:g} s" if expired.is_set() else f"{type(e).__name__}: {e}"
            raise _Retryable(f"{method} {route} failed ({why}; timeout {timeout:g} s)") from None
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():
            raise _Retryable(f"{method} {route} failed (timed out: no complete answer within {timeout:g} s; timeout {timeout:g} s)")
        if status != 200:
            try:
                msg = json.loads(raw.decode()).get("error", "")
            except Exception:
                msg = ""
            problem = f"{method} {route} answered HTTP {status}" + (f": {msg}" if msg else "")
            if status >= 500:
                raise _Retryable(problem)
            raise self.error(problem)  # 4xx: the request itself is wrong; sending it again would not help
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
        offered = health.get("options") or {}
        for k, v in self.options.items():
            if k not in offered or v not in offered[k]:
                raise self.error(f"the reward asks for option {k} = {v!r}, which this server does not offer "
                                 f"(it offers {offered or 'none'}); update the server")
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
                                       ids, self.image_encoding, self.options)
            except P.ProtocolError as e:
                raise self.error(e) from None
            resp = self._request("POST", "/v1/score", json.dumps(body).encode(), self.timeout)
            try:
                out += P.check_response(resp, self.tool, ids, self.identity, self.sub_scores)
            except P.ProtocolError as e:
                raise self.error(e) from None
        return out
