"""The client against the scripted stand-in server: a 500 then success, a hang -> timeout -> retry,
exhausted retries, no retry on 4xx, the backoff schedule, and the request cache (torn last line)."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from megatron_qwen.synth.client import (
    Client,
    ClientConfig,
    RequestBudgetExhausted,
    RequestCache,
    RequestFailed,
    request_key,
)


def client_for(url: str, cache: RequestCache | None = None, **kw) -> tuple[Client, list[float]]:
    slept: list[float] = []
    config = ClientConfig(url=url, model="m", **{"timeout_s": 5.0, "retries": 3, "backoff_s": 0.01, **kw})
    return Client(config, cache, sleep=slept.append), slept


def test_500_then_success(standin):
    standin.reset(answer=lambda body: [f"answer to {body['messages'][0]['content']}"], fail_first=2)
    client, slept = client_for(standin.url, backoff_s=1.0)
    key, texts = client.complete(client.body("q1", max_tokens=8))
    assert texts == ["answer to q1"]
    assert standin.attempts[key] == 3 and client.sent == 3 and client.retried == 2
    assert 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0  # exponential: base * 2**i, jitter in [0.5, 1]


def test_hang_times_out_then_retry_succeeds(standin):
    standin.reset(answer=lambda body: ["late"], hang_first=1, hang_s=1.5)
    client, slept = client_for(standin.url, timeout_s=0.3)
    key, texts = client.complete(client.body("q2", max_tokens=8))
    assert texts == ["late"]
    assert standin.attempts[key] == 2 and client.retried == 1 and len(slept) == 1


def test_gives_up_after_retries_and_never_retries_4xx(standin):
    standin.reset(answer=lambda body: ["x"], fail_first=100)
    client, slept = client_for(standin.url, retries=2)
    with pytest.raises(RequestFailed, match="HTTP 500.*3 attempts"):
        client.complete(client.body("q3", max_tokens=8))
    assert client.sent == 3 and len(slept) == 2
    standin.reset(fail_first=0)
    bad = Client(ClientConfig(url=standin.url + "/nowhere", model="m", retries=3), sleep=slept.append)
    with pytest.raises(RequestFailed, match="HTTP 404"):
        bad.complete(bad.body("q", max_tokens=1))
    assert bad.sent == 1


def test_connection_refused_is_retried():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        client, slept = client_for(f"http://127.0.0.1:{port}", retries=2)
        with pytest.raises(RequestFailed, match="connection error"):
            client.complete(client.body("q", max_tokens=1))
    assert client.sent == 3 and len(slept) == 2


def test_completions_api_and_choices_order(standin):
    standin.reset(answer=lambda body: [f"{body['prompt']}-{i}" for i in range(body["n"])])
    client, _ = client_for(standin.url, api="completions")
    body = client.body("p", max_tokens=4, n=3, seed=7, temperature=0.5, stop=["\n"])
    assert set(body) == {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "seed", "stop"}
    assert client.complete(body)[1] == ["p-0", "p-1", "p-2"]


def test_cache_answers_repeats_and_concurrent_duplicates_are_sent_once(standin, tmp_path):
    gate = threading.Event()

    def slow(body):
        gate.wait(5)
        return ["same"]

    standin.reset(answer=slow)
    client, _ = client_for(standin.url, RequestCache(tmp_path / "c.jsonl"))
    body = client.body("dup", max_tokens=2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(client.complete(body))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(results) == 4 and all(r[1] == ["same"] for r in results)
    assert standin.attempts[request_key("chat", body)] == 1 and client.new_requests == 1
    again, _ = client_for(standin.url, RequestCache(tmp_path / "c.jsonl"))  # a new run: from the file
    assert again.complete(body)[1] == ["same"] and again.cache_hits == 1 and again.sent == 0
    assert standin.attempts[request_key("chat", body)] == 1


def test_budget_stops_before_sending(standin):
    standin.reset(answer=lambda body: ["a"])
    client, _ = client_for(standin.url, max_requests=1)
    client.complete(client.body("b1", max_tokens=1))
    with pytest.raises(RequestBudgetExhausted):
        client.complete(client.body("b2", max_tokens=1))
    assert sum(standin.attempts.values()) == 1


def test_key_is_canonical():
    a = {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1}
    b = json.loads(json.dumps(dict(reversed(list(a.items())))))
    assert request_key("chat", a) == request_key("chat", b)
    assert request_key("chat", a) != request_key("completions", a)
    assert request_key("chat", a) != request_key("chat", {**a, "n": 2})


def test_torn_last_line_is_ignored_and_cut(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = RequestCache(path)
    cache.put("k1", {"q": 1}, ["one"])
    cache.put("k2", {"q": 2}, ["two"])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "k3", "request": {"q": 3}, "te')  # killed mid-write
    reloaded = RequestCache(path)
    assert reloaded.entries == {"k1": ["one"], "k2": ["two"]} and reloaded.torn_lines == 1
    assert path.read_bytes() == whole  # cut, so the next append starts on its own line
    reloaded.put("k3", {"q": 3}, ["three"])
    assert RequestCache(path).entries == {"k1": ["one"], "k2": ["two"], "k3": ["three"]}
    path.write_bytes(b'{"key": "k1", "request": {}, "texts": ["one"]}\n{garbage\n' + whole)
    with pytest.raises(ValueError, match="line 2 of the request cache is corrupt"):
        RequestCache(path)
