"""A client for any OpenAI-compatible completions endpoint, with retries and a resumable request cache.

Why it exists: synthesis sends tens of thousands of requests to a server that may be slow, restarted or
overloaded, and a run may be killed. Every request is identified by the hash of its canonical body (the
JSON with sorted keys, plus the API path), and its response is stored in an append-only cache before it
is used: a rerun finds it there and never sends it again. Identical requests in flight at the same time
are sent once (the second caller waits for the first).

The cache is ONE append-only JSONL file (`{"key", "request", "texts"}` per line), each line written whole
and fsync'ed. Why not one file per key: a run makes many thousands of small entries and one file per key
would cost a file plus a directory fsync each; a single append is one write + one fsync, and loading is
one sequential read. A line torn by a kill is the last line (appends are sequential under a lock): on
load it is ignored and cut off, so the next append starts on a fresh line.

The HTTP client is the standard library's `urllib.request`: one JSON POST with a timeout is all that is
needed, and it adds no dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

API_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class RequestFailed(RuntimeError):
    """A request that failed for good: a 4xx answer, or retries exhausted, or an unreadable response."""


class RequestBudgetExhausted(RuntimeError):
    """The run's `max_requests` was reached: nothing more is sent (the cache keeps what was received)."""


def request_key(api: str, body: dict) -> str:
    """sha256 of the canonical request: API path + body as JSON with sorted keys. The URL is not part of
    it on purpose: the same model served elsewhere answers the same cached requests."""
    canonical = json.dumps({"api": API_PATHS[api], "body": body}, sort_keys=True, ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class RequestCache:
    """key -> response texts, loaded from and appended to one JSONL file (fsync per line)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, list[str]] = {}
        self.torn_lines = 0
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        while pos < len(data):
            newline = data.find(b"\n", pos)
            if newline < 0:  # a last line without its newline: torn by a kill
                self.torn_lines += 1
                break
            line = data[pos:newline]
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = list(entry["texts"])
            except (ValueError, KeyError, TypeError) as err:
                if newline + 1 < len(data):
                    raise ValueError(f"{self.path}: line {data[:pos].count(b'\n') + 1} of the request cache "
                                     "is corrupt (not a torn last line); move the file away to start over") from err
                self.torn_lines += 1
                break
            pos = good_end = newline + 1
        if good_end < len(data):  # cut the torn tail so the next append starts on a fresh line
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())

    def get(self, key: str) -> list[str] | None:
        return self.entries.get(key)

    def put(self, key: str, request: dict, texts: list[str]) -> None:
        line = json.dumps({"key": key, "request": request, "texts": texts}, ensure_ascii=False) + "\n"
        with self._lock:
            self.entries[key] = list(texts)
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(line.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())


@dataclass
class ClientConfig:
    url: str
    """Base URL of the server, e.g. http://127.0.0.1:8000 (the /v1/... path is added)."""
    model: str
    api: str = "chat"
    """chat (/v1/chat/completions, `messages`) or completions (/v1/completions, `prompt`)."""
    timeout_s: float = 120.0
    retries: int = 5
    """Retries after the first attempt, on connection errors, timeouts, 429 and 5xx."""
    backoff_s: float = 1.0
    """Delay before retry i (0-based) is backoff_s * 2**i, at most backoff_max_s, times a jitter in [0.5, 1]."""
    backoff_max_s: float = 60.0
    max_requests: int | None = None
    """Stop (RequestBudgetExhausted) instead of sending more than this many requests in this run."""
    api_key: str | None = None


class Client:
    """Sends requests (each at most once per cache), retrying transient failures with exponential backoff."""

    def __init__(self, config: ClientConfig, cache: RequestCache | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        if config.api not in API_PATHS:
            raise ValueError(f"api must be one of {sorted(API_PATHS)}, got {config.api!r}")
        self.config = config
        self.cache = cache or RequestCache(None)
        self.sleep = sleep
        self.rng = rng or random.Random(0)
        self.sent = 0          # HTTP requests that reached the wire (retries included)
        self.new_requests = 0  # distinct requests sent in this run (not answered from the cache)
        self.cache_hits = 0
        self.retried = 0
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future] = {}

    def body(self, prompt: str, *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
             seed: int | None = None, stop: list[str] | None = None, model: str | None = None) -> dict:
        body: dict = {"model": model or self.config.model, "max_tokens": max_tokens, "temperature": temperature,
                      "top_p": top_p, "n": n}
        if self.config.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        return body

    def complete(self, body: dict, url: str | None = None) -> tuple[str, list[str]]:
        """(request key, the choices' texts), from the cache or the server (`url`, default config.url)."""
        key = request_key(self.config.api, body)
        with self._lock:
            cached = self.cache.get(key)
            if cached is not None:
                self.cache_hits += 1
                return key, cached
            waiting = self._in_flight.get(key)
            if waiting is None:
                if self.config.max_requests is not None and self.new_requests >= self.config.max_requests:
                    raise RequestBudgetExhausted(f"max_requests={self.config.max_requests} reached")
                self.new_requests += 1
                mine = self._in_flight[key] = Future()
        if waiting is not None:
            return key, waiting.result()
        try:
            texts = self._send_with_retries(body, url or self.config.url)
            self.cache.put(key, body, texts)
            mine.set_result(texts)
            return key, texts
        except BaseException as err:
            mine.set_exception(err)
            raise
        finally:
            with self._lock:
                self._in_flight.pop(key, None)

    def _send_with_retries(self, body: dict, url: str) -> list[str]:
        c = self.config
        for attempt in range(c.retries + 1):
            try:
                return self._send(body, url)
            except _Transient as err:
                if attempt == c.retries:
                    raise RequestFailed(f"{url}{API_PATHS[c.api]}: {err} (gave up after {attempt + 1} "
                                        "attempts)") from None
                with self._lock:
                    self.retried += 1
                delay = min(c.backoff_max_s, c.backoff_s * 2 ** attempt) * (0.5 + 0.5 * self.rng.random())
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _send(self, body: dict, url: str) -> list[str]:
        c = self.config
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        request = urllib.request.Request(url.rstrip("/") + API_PATHS[c.api], data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        with self._lock:
            self.sent += 1
        try:
            with urllib.request.urlopen(request, timeout=c.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                raise _Transient(f"HTTP {err.code}") from None
            detail = err.read()[:300].decode("utf-8", "replace")
            raise RequestFailed(f"{url}{API_PATHS[c.api]}: HTTP {err.code}: {detail}") from None
        except TimeoutError as err:
            raise _Transient(f"timeout after {c.timeout_s} s ({err})") from None
        except urllib.error.URLError as err:
            raise _Transient(f"connection error: {err.reason}") from None
        except (ConnectionError, http_client_errors()) as err:
            raise _Transient(f"connection error: {err!r}") from None
        return parse_choices(raw, c.api)


class _Transient(Exception):
    pass


def http_client_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException


def parse_choices(raw: bytes, api: str) -> list[str]:
    """The texts of an OpenAI response's choices, in `index` order."""
    try:
        data = json.loads(raw)
        choices = sorted(data["choices"], key=lambda ch: ch.get("index", 0))
        if api == "chat":
            return [ch["message"]["content"] or "" for ch in choices]
        return [ch["text"] for ch in choices]
    except (ValueError, KeyError, TypeError) as err:
        raise RequestFailed(f"unreadable response ({err!r}): {raw[:200]!r}") from None
