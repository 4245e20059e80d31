"""An OpenAI-compatible completions server over the Generator: `/v1/completions`, `/v1/chat/completions`,
`/v1/models`.

The standard library's ThreadingHTTPServer reads and validates requests on its threads; the generation
itself runs on the process's main thread, one request at a time, taken from a queue (the CPU adapter's
device mapping and megatron's parallel state belong to that thread, and under model parallelism every
rank must run the same generation in the same order). With TP/PP > 1, rank 0 serves HTTP and broadcasts
each request to the other ranks, which follow in `follow()`; all ranks then generate together.
A heavier framework (an ASGI server, continuous batching) would add dependencies and concurrency this
single-queue design does not need; the prompts of one request (a list of prompts, n > 1) are batched.

Requests (JSON): prompt (string, list of strings, list of ids or list of id lists) or messages (chat),
max_tokens (default 16), temperature (default 1.0), top_p (1.0), n (1), stop (string or list of strings),
seed (integer). Unsupported options (stream, echo, logprobs, best_of > n, suffix) are refused with 400,
like any malformed field, with OpenAI's error object naming the field.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megatron_qwen.data.formats.chat import (
    AUTO,
    ChatFormatError,
    normalize_messages,
    render_text,
    resolve_system_prompt,
)
from megatron_qwen.data.tokenizer.qwen import IM_END, IM_START
from megatron_qwen.model.generation import SamplingParams

MAX_N = 16


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _number(body: dict, name: str, default, kind, low=None, high=None, low_open=False):
    value = body.get(name, default)
    if value is None:
        value = default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadRequest(f"'{name}' must be an integer, got {value!r}", name)
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadRequest(f"'{name}' must be a number, got {value!r}", name)
    if low is not None and (value <= low if low_open else value < low):
        raise BadRequest(f"'{name}' must be {'>' if low_open else '>='} {low}, got {value!r}", name)
    if high is not None and value > high:
        raise BadRequest(f"'{name}' must be <= {high}, got {value!r}", name)
    return value


def sampling_from(body: dict, stop_ids: frozenset[int]) -> tuple[SamplingParams, int]:
    """(SamplingParams, n) from an OpenAI request body; BadRequest names the field."""
    for name in ("stream", "echo", "logprobs", "suffix", "tools", "functions"):
        if body.get(name):
            raise BadRequest(f"'{name}' is not supported by this server", name)
    n = _number(body, "n", 1, int, 1, MAX_N)
    if body.get("best_of") not in (None, n):
        raise BadRequest("'best_of' other than n is not supported", "best_of")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    if any(not s for s in stop):
        raise BadRequest("'stop' strings must not be empty", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {seed!r}", "seed")
    params = SamplingParams(
        max_tokens=_number(body, "max_tokens", 16, int, 1),
        temperature=float(_number(body, "temperature", 1.0, float, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, float, 0.0, 1.0, low_open=True)),
        seed=seed, stop=stop, stop_ids=stop_ids,
    )
    return params, n


def prompts_from(body: dict) -> list[str | list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise BadRequest("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                     "prompt")


class Service:
    """Turns request bodies into generations (the part of the server that needs the model)."""

    def __init__(self, generator, model_name: str, system_prompt: str | None = AUTO):
        self.generator = generator
        self.model_name = model_name
        tok = generator.tokenizer
        self.eod = {tok.eod} if getattr(tok, "eod", None) is not None else set()
        try:
            self.im_end = {tok.token_id(IM_END)}
        except (KeyError, AttributeError):
            self.im_end = set()
        try:
            self.system_prompt = resolve_system_prompt(system_prompt, tok)
        except Exception:  # a tokenizer without transformers' chat template support
            self.system_prompt = None if system_prompt == AUTO else system_prompt

    def chat_prompt(self, messages) -> str:
        try:
            turns = normalize_messages(messages)
        except ChatFormatError as e:
            raise BadRequest(str(e), "messages") from None
        return render_text(turns, self.system_prompt) + f"{IM_START}assistant\n"

    def validate(self, kind: str, body: dict) -> tuple[list, SamplingParams, int]:
        """(prompts as ids, params, n); BadRequest for anything a model is not needed to refuse."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if kind == "chat":
            if "messages" not in body:
                raise BadRequest("'messages' is required", "messages")
            prompts = [self.chat_prompt(body["messages"])]
            stop_ids = frozenset(self.eod | self.im_end)
        else:
            if "prompt" not in body:
                raise BadRequest("'prompt' is required", "prompt")
            prompts = prompts_from(body)
            stop_ids = frozenset(self.eod)
        params, n = sampling_from(body, stop_ids)
        ids = [self.generator.encode(p) if isinstance(p, str) else p for p in prompts]
        vocab = self.generator.decoder.vocab_size
        limit = self.generator.decoder.max_sequence_length
        for i, p in enumerate(ids):
            if not p:
                raise BadRequest(f"prompt {i} is empty", "prompt")
            if vocab is not None and any(t < 0 or t >= vocab for t in p):
                raise BadRequest(f"prompt {i} holds a token id outside [0, {vocab})", "prompt")
            if len(p) + params.max_tokens > limit:
                raise BadRequest(f"prompt {i} ({len(p)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                                 f"model's context of {limit} tokens", "max_tokens")
        return ids, params, n

    def run(self, ids: list[list[int]], params: SamplingParams, n: int):
        """Collective: generate n continuations of each prompt (prompt-major order)."""
        return self.generator.generate([p for p in ids for _ in range(n)], params)

    def respond(self, kind: str, ids, n: int, gens) -> dict:
        created = int(time.time())
        prompt_tokens = sum(len(p) for p in ids)
        completion_tokens = sum(len(g.tokens) for g in gens)
        choices = []
        for i, g in enumerate(gens):
            if kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": g.text},
                                "logprobs": None, "finish_reason": g.finish_reason})
            else:
                choices.append({"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason})
        return {
            "id": ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created, "model": self.model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


class _Job:
    def __init__(self, ids, params, n):
        self.ids, self.params, self.n = ids, params, n
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


def _handler(service: Service, jobs: queue.Queue):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per request would drown a log
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, param=None, kind="invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": service.model_name, "object": "model",
                                                              "created": 0, "owned_by": "megatron_qwen"}]})
            else:
                self._error(404, f"no route {self.path}", kind="not_found")

        def do_POST(self):
            route = self.path.rstrip("/")
            kind = {"/v1/completions": "text", "/v1/chat/completions": "chat"}.get(route)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if kind is None:
                return self._error(404, f"no route {self.path}", kind="not_found")
            try:
                body = json.loads(raw or b"null")
                ids, params, n = service.validate(kind, body)
            except json.JSONDecodeError as e:
                return self._error(400, f"the request body is not valid JSON: {e.msg}")
            except BadRequest as e:
                return self._error(400, str(e), e.param)
            except ValueError as e:  # SamplingParams' own checks
                return self._error(400, str(e))
            job = _Job(ids, params, n)
            jobs.put(job)
            job.done.wait()
            if job.error is not None:
                return self._error(500, f"generation failed: {job.error}", kind="server_error")
            self._send(200, service.respond(kind, ids, n, job.result))

    return Handler


def serve(service: Service, host: str = "127.0.0.1", port: int = 8000, ready=None, stop: threading.Event | None = None):
    """Rank 0: serve HTTP until `stop` is set (or forever), generating on this thread. `ready(address)` is called
    once listening. With a model-parallel group of more than one rank, the others must run `follow()`."""
    import torch.distributed as dist

    jobs: queue.Queue = queue.Queue()
    httpd = ThreadingHTTPServer((host, port), _handler(service, jobs))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    thread.start()
    multi = dist.is_initialized() and dist.get_world_size() > 1
    if ready is not None:
        ready(httpd.server_address)
    try:
        while stop is None or not stop.is_set():
            try:
                job = jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if multi:
                    dist.broadcast_object_list([(job.ids, job.params, job.n)], src=0)
                job.result = service.run(job.ids, job.params, job.n)
            except BaseException as e:  # noqa: BLE001 - reported to the client as a 500
                job.error = e
            finally:
                job.done.set()
    finally:
        httpd.shutdown()
        httpd.server_close()
        if multi:
            dist.broadcast_object_list([None], src=0)


def follow(service: Service) -> None:
    """Ranks other than 0: run every generation rank 0 broadcasts, until it broadcasts None."""
    import torch.distributed as dist

    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return
        ids, params, n = box[0]
        service.run(ids, params, n)
