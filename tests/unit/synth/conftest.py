"""Synth test fixtures: a scripted OpenAI-compatible stand-in server on loopback, and a sandbox."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from megatron_qwen.sandbox import Limits, Sandbox, SandboxConfig
from megatron_qwen.sandbox.isolation import bwrap_problem
from megatron_qwen.synth.client import request_key


class StandIn:
    """A scripted "model": `answer(body) -> list of texts` (one per choice). The first `fail_first` attempts
    of each distinct request get HTTP 500, and the first `hang_first` ones sleep `hang_s` before answering.
    Every attempt is counted by request key (`attempts`), so tests can prove a request was never resent."""

    def __init__(self):
        self.answer: Callable[[dict], list[str]] = lambda body: ["ok"] * body.get("n", 1)
        self.fail_first = 0
        self.hang_first = 0
        self.hang_s = 0.0
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def reset(self, answer: Callable[[dict], list[str]] | None = None, fail_first: int = 0, hang_first: int = 0,
              hang_s: float = 0.0) -> None:
        with self.lock:
            if answer is not None:
                self.answer = answer
            self.fail_first, self.hang_first, self.hang_s = fail_first, hang_first, hang_s
            self.attempts = Counter()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, path: str, body: dict) -> tuple[int, dict]:
        api = "chat" if path == "/v1/chat/completions" else "completions" if path == "/v1/completions" else None
        if api is None:
            return 404, {"error": {"message": f"no route {path}"}}
        key = request_key(api, body)
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if attempt <= self.hang_first:
            time.sleep(self.hang_s)
        if attempt <= self.fail_first:
            return 500, {"error": {"message": "scripted failure"}}
        texts = self.answer(body)[: body.get("n", 1)]
        if api == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                       for i, t in enumerate(texts)]
        else:
            choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
        return 200, {"id": "standin", "object": "chat.completion", "model": body.get("model"), "choices": choices}


def _handler(standin: StandIn):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            status, payload = standin.handle(self.path, body)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    """The stand-in server on 127.0.0.1, port chosen by the OS, served from a thread."""
    s = StandIn()
    s.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    s.server.daemon_threads = True
    thread = threading.Thread(target=s.server.serve_forever, daemon=True)
    thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def synth_work_root() -> Iterator[str]:
    """A run-directory parent the sandbox uid can reach (pytest's tmp_path is mode 700)."""
    root = tempfile.mkdtemp(prefix="synth-tests-")
    os.chmod(root, 0o711)
    yield root
    os.rmdir(root)


@pytest.fixture(scope="session")
def synth_sandbox(synth_work_root: str) -> Sandbox:
    """The isolated sandbox where bubblewrap works, else the explicit isolation='none' opt-out (the
    programs in these tests are our own; the network case is stopped by the static check before it runs)."""
    isolation = "bwrap" if bwrap_problem() is None else "none"
    return Sandbox(SandboxConfig(isolation=isolation, limits=Limits(timeout_s=3.0, memory_mb=512),
                                 work_root=synth_work_root))
