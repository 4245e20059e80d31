"""`megatron-qwen synth` end to end against the project's own `megatron-qwen serve`, on loopback.

A tiny model is trained for two steps (from a random HF model, through the real trainer), its checkpoint is
served (`serve --checkpoint`), and synth talks to it through a counting pass-through (the synth tests'
stand-in server, answering by forwarding each request to the real server), so every request that reaches the
model is counted. The model's outputs are poor; what is checked is the mechanics: the run stopped part-way
(`--max-requests`) and rerun sends no request twice, every kept SFT answer and every chosen answer pass their
tests in the sandbox and every rejected one fails, and the report's counts add up.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import ThreadingHTTPServer

import pytest
from _train_helpers import tiny, train

from megatron_qwen.sandbox import Status
from megatron_qwen.synth import cli
from megatron_qwen.synth.pipeline import check_report
from megatron_qwen.synth.verify import assemble
from tests.integration._serve_helpers import serving
from tests.integration._tiny_model import make_tiny_hf
from tests.unit.synth.conftest import StandIn, _handler

# every sandbox runs as one unprivileged uid, shared with the sandbox tests' worker (tests/conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sandbox")]

SNIPPETS = [
    {"id": "add", "language": "python", "path": "m/add.py", "content": "def add(a, b):\n    return a + b\n"},
    {"id": "rev", "language": "python", "path": "m/rev.py", "content": "def rev(s):\n    return s[::-1]\n"},
]


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_tokenizer_dir):
    from megatron_qwen.sandbox.isolation import bwrap_problem

    if (problem := bwrap_problem()) is not None:
        pytest.skip(f"bubblewrap unusable: {problem}")
    tmp = tmp_path_factory.mktemp("synth_serve")
    hf = make_tiny_hf(tmp / "hf", small_tokenizer_dir)
    ck = tmp / "ck"
    train(1, tiny(ck, "train.train_iters=2", "checkpoint.save_interval=0", "data.eod_token_id=600",
                  "model.vocab_size=640", "model.num_layers=2", "model.ffn_hidden_size=128", "model.rope_theta=10000.0",
                  "model.max_position_embeddings=2048", "checkpoint.init_from=hf", f"checkpoint.init_path={hf}"), tmp)
    with serving(["--checkpoint", str(ck), "--tokenizer", str(small_tokenizer_dir)]) as url:
        def forward(body: dict) -> list[str]:
            request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as response:
                return [c["message"]["content"] for c in json.loads(response.read())["choices"]]

        counter = StandIn()  # a counting pass-through (the synth tests' stand-in server) in front of the model
        counter.reset(answer=forward)
        counter.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(counter))
        counter.server.daemon_threads = True
        threading.Thread(target=counter.server.serve_forever, daemon=True).start()
        yield tmp, counter
        counter.server.shutdown()
        counter.server.server_close()


def test_synth_against_the_served_checkpoint(served):
    tmp, counter = served
    (tmp / "snippets.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SNIPPETS))
    out = tmp / "out"
    argv = ["--input", str(tmp / "snippets.jsonl"), "--output", str(out), "--url", counter.url, "--model", "ck",
            "--samples", "2", "--max-tokens", "24", "--concurrency", "2", "--workers", "2", "--timeout", "300",
            "--run-timeout", "5", "--no-progress"]
    assert cli.main([*argv, "--max-requests", "3"]) == 3  # stopped part-way, as a killed run would be
    assert cli.main(argv) == 0
    assert counter.attempts and max(counter.attempts.values()) == 1  # no request reached the model twice
    report = json.loads((out / "report.json").read_text())
    assert check_report(report) == [] and report["consistent"], report
    assert report["requests"]["from_cache"] >= 3  # the first run's answers were reused
    assert report["requests"]["sent_new"] == sum(counter.attempts.values()) - 3
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    tests = {r["request_key"]: r["code"] for r in records if r["step"] == "tests"}
    from megatron_qwen.sandbox import Sandbox

    sandbox = Sandbox()

    def status(provenance, fenced: str):
        code = fenced.split("\n", 1)[1].rsplit("\n```", 1)[0] if fenced.startswith("```") else fenced
        return sandbox.run(assemble(code, tests[provenance["tests_key"]], provenance["language"]),
                           provenance["language"]).status

    for record in (json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()):
        assert status(record["provenance"], record["messages"][1]["content"]) == Status.PASSED
    for pair in (json.loads(x) for x in (out / "dpo.jsonl").read_text().splitlines()):
        if pair["provenance"]["pair_source"] == "execution":
            assert status(pair["provenance"], pair["chosen"]) == Status.PASSED
            assert status(pair["provenance"], pair["rejected"]) != Status.PASSED
