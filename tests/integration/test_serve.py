"""`megatron-qwen serve` over real HTTP on loopback, on a tiny random model (HF directory).

The server runs as its own process (`python -m megatron_qwen serve --port 0`); requests go through urllib.
Greedy completions must equal the in-process Generator's on the same weights; the chat endpoint must
give what /v1/completions gives for the conversation rendered in ChatML plus the assistant header; bad
requests get 400 with OpenAI's error object naming the field.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from megatron_qwen.convert.importer import run_single_process
from tests.integration._serve_helpers import serving
from tests.integration._tiny_model import make_tiny_hf

PROMPTS = ["def add(a, b):\n    return", "import json\n\nclass Decoder:"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_tokenizer_dir):
    hf = make_tiny_hf(tmp_path_factory.mktemp("serve") / "hf", small_tokenizer_dir, seed=1)
    with serving(["--hf", str(hf)]) as base:
        yield base + "/v1", hf


def _post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _in_process(hf, prompts, max_tokens):
    from megatron_qwen.eval.generate import Generator, ensure_distributed, load_model, load_tokenizer_for
    from megatron_qwen.model.generation import SamplingParams

    ensure_distributed()
    tok = load_tokenizer_for(None, hf)
    loaded = load_model(hf=hf)
    gen = Generator(loaded.chunks, tok, vocab_size=loaded.vocab_size)
    out = gen.generate(prompts, SamplingParams(max_tokens=max_tokens, stop_ids=frozenset({tok.eod})))
    return [(g.text, g.finish_reason, len(g.tokens)) for g in out], [len(gen.encode(p)) for p in prompts]


def test_greedy_completions_equal_the_in_process_generator(server):
    url, hf = server
    status, got = _post(url + "/completions", {"prompt": PROMPTS, "max_tokens": 12, "temperature": 0})
    assert status == 200 and got["object"] == "text_completion"
    want, prompt_lengths = run_single_process(_in_process, hf, PROMPTS, 12)
    assert [(c["text"], c["finish_reason"]) for c in got["choices"]] == [(t, r) for t, r, _ in want]
    assert [c["index"] for c in got["choices"]] == [0, 1]
    assert got["usage"] == {"prompt_tokens": sum(prompt_lengths), "completion_tokens": sum(n for _, _, n in want),
                            "total_tokens": sum(prompt_lengths) + sum(n for _, _, n in want)}


def test_chat_applies_the_template(server):
    url, _ = server
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Add two numbers."}]
    status, chat = _post(url + "/chat/completions", {"messages": messages, "max_tokens": 10, "temperature": 0})
    assert status == 200 and chat["object"] == "chat.completion"
    rendered = ("<|im_start|>system\nYou write Python.<|im_end|>\n<|im_start|>user\nAdd two numbers.<|im_end|>\n"
                "<|im_start|>assistant\n")
    _, plain = _post(url + "/completions", {"prompt": rendered, "max_tokens": 10, "temperature": 0, "stop": []})
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": plain["choices"][0]["text"]}
    assert chat["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


def test_sampling_with_a_seed_repeats_and_n_gives_n_choices(server):
    url, _ = server
    body = {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 5, "n": 3}
    (s1, a), (s2, b) = _post(url + "/completions", body), _post(url + "/completions", body)
    assert s1 == s2 == 200 and len(a["choices"]) == 3 and a["choices"] == b["choices"]
    status, stopped = _post(url + "/completions", {"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0})
    text = stopped["choices"][0]["text"]
    if len(text) > 2:  # a stop string taken from the greedy text cuts the completion right before it
        _, cut = _post(url + "/completions", {"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0,
                                              "stop": [text[1:3]]})
        assert cut["choices"][0]["text"] == text[: text.find(text[1:3])]
        assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("path,body,param", [
    ("/completions", {"max_tokens": 4}, "prompt"),
    ("/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
    ("/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/completions", {"prompt": "x", "stream": True}, "stream"),
    ("/completions", {"prompt": "x", "stop": 3}, "stop"),
    ("/completions", {"prompt": [1, 99999]}, "prompt"),
    ("/completions", {"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
    ("/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ("/completions", b"{not json", None),
])
def test_bad_requests_get_400(server, path, body, param):
    url, _ = server
    status, got = _post(url + path, body)
    assert status == 400 and got["error"]["type"] == "invalid_request_error" and got["error"]["message"]
    assert got["error"]["param"] == param


def test_models_and_unknown_route(server):
    url, hf = server
    with urllib.request.urlopen(url + "/models", timeout=30) as r:
        assert json.loads(r.read())["data"][0]["id"] == hf.name
    status, got = _post(url + "/nothing", {})
    assert status == 404


def test_serve_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    from megatron_qwen.cli.serve import main

    assert main(["--checkpoint", str(tmp_path / "absent")]) == 2
    assert main(["--hf", str(tmp_path), "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err) and "absent" in err[0]
