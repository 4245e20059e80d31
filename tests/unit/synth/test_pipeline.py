"""`megatron-qwen synth` end to end against the scripted stand-in server (loopback), killed and rerun.

The stand-in plays every role (instruction writer, answer sampler, test writer, judge) from a script keyed
by a task marker in the prompt, so the right outcome of every answer is known beforehand. Checked:
every kept SFT answer and every chosen answer passes its tests when run again in the sandbox, every
rejected one fails; the outcomes are the scripted ones; the report's counts add up and match the files;
a run stopped by --max-requests and then rerun never sends a request twice (counted at the server).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from megatron_qwen.data.formats.chat import normalize_messages
from megatron_qwen.data.formats.preference import pair_messages
from megatron_qwen.sandbox import Status, toolchain_problem
from megatron_qwen.sandbox.isolation import bwrap_problem
from megatron_qwen.synth import cli
from megatron_qwen.synth.judge import both_orders
from megatron_qwen.synth.pipeline import check_report
from megatron_qwen.synth.verify import assemble

ALL_YES = "1. yes\n2. yes\n3. yes\n4. yes\n5. yes"
PY_SUM = "```python\ndef sum_list(xs):\n    return sum(xs)\n```"
PY_SUM_LOOP = "```python\ndef sum_list(xs):\n    t = 0\n    for x in xs:\n        t += x\n    return t\n```"
BENCH_TEXT = "compute the running total of the numbers in the given list and return it as an integer"

TASKS = {
    "sum_list": dict(
        language="python",
        instruction="Write sum_list(xs) returning the sum of a list of integers, 0 when it is empty.",
        answers=[PY_SUM, "```python\ndef sum_list(xs):\n    return 0\n```", PY_SUM_LOOP],
        tests="```python\nassert sum_list([]) == 0\nassert sum_list([1, 2, 3]) == 6\n```",
        outcomes=["kept", "failed_test", "kept"]),
    "is_even": dict(
        language="python",
        instruction="Write is_even(n): True when n is even.",
        answers=["```python\ndef is_even(n):\n    return n % 2 == 0\n```",
                 "```python\ndef is_even(n):\n    return not n & 1\n```",
                 "```python\ndef is_even(n):\n    return (n % 2) == 0\n```"],
        tests="```python\nassert is_even(4)\nassert not is_even(7)\n```",
        outcomes=["kept", "kept", "kept"]),
    "max_js": dict(
        language="javascript",
        instruction="Write largest(xs) in JavaScript: the largest number of a non-empty array.",
        answers=["```javascript\nfunction largest(xs) { return Math.min(...xs); }\n```",
                 "```javascript\nfunction largest(xs) { while (true) {} }\n```",
                 "```javascript\nfunction largest(xs { return Math.max(...xs); }\n```"],
        tests="```javascript\nconst assert = require('assert');\nassert.strictEqual(largest([1, 5, 2]), 5);\n```",
        outcomes=["failed_test", "timeout", "parse_error"]),
    "square_cpp": dict(
        language="cpp",
        instruction="Write int square(int x) in C++.",
        answers=["```cpp\nint square(int x) { return x * x; }\n```",
                 "```cpp\nint square(int x) { return x * y; }\n```",
                 "```cpp\nint square(int x) { return x + x; }\n```"],
        tests="```cpp\n#include <cassert>\nint main() { assert(square(3) == 9); assert(square(-2) == 4); }\n```",
        outcomes=["kept", "compile_error", "failed_test"]),
    "lowscore": dict(
        language="python",
        instruction="Write triple(x) returning 3 * x.",
        answers=["```python\ndef triple(x):\n    return 3 * x\n```"] * 3,
        tests="```python\nassert triple(2) == 6\n```",
        outcomes=["low_score"] * 3),
    "judged": dict(
        language="python",
        instruction="Write greet(name) returning 'Hello, ' + name.",
        answers=["```python\ndef greet(name):\n    return 'Hi ' + name\n```",
                 "```python\ndef greet(name):\n    # GOOD\n    return 'Hello, ' + name\n```",
                 "```python\nimport subprocess\ndef greet(name):\n    return subprocess.run(['echo', name])\n```"],
        tests="Sorry, I cannot write tests for that.",
        outcomes=["no_tests", "no_tests", "not_self_contained"]),
    "biased": dict(
        language="python",
        instruction="Write double(x) returning 2 * x.",
        answers=["```python\ndef double(x):\n    return 2 * x\n```", "```python\ndef double(x):\n    return x + x\n```",
                 "```python\ndef double(x):\n    return x << 1\n```"],
        tests="```python\nassert double(2) == 4\nassert double(\n```",
        outcomes=["no_tests"] * 3),
    "contaminated": dict(
        language="python",
        instruction=f"Please {BENCH_TEXT}. Name it total(xs).",
        answers=["```python\ndef total(xs):\n    return sum(xs)\n```", "```python\ndef total(xs):\n    return 1\n```",
                 "```python\ndef total(xs):\n    return sum(xs)\n```"],
        tests="```python\nassert total([1, 2]) == 3\n```",
        outcomes=["kept", "failed_test", "kept"]),
}
MARK = re.compile(r"TASK:(\w+)")


def scripted(body: dict) -> list[str]:
    prompt = body["messages"][0]["content"]
    task = TASKS[MARK.search(prompt).group(1)]
    name = MARK.search(prompt).group(1)
    if prompt.startswith("You are writing a programming exercise"):
        return [f"{task['instruction']} [TASK:{name}]"]
    if prompt.startswith("Solve the following task"):
        return task["answers"][: body["n"]]
    if prompt.startswith("Write unit tests"):
        return [task["tests"]]
    if prompt.startswith("You are reviewing"):
        if name == "lowscore":
            return ["1. no\n2. yes\n3. no\n4. no\n5. yes"]
        if name == "sum_list":  # 0.8, and 1.0 for the loop variant: the best is not the first
            return [ALL_YES if "for x in xs" in prompt else "1. yes\n2. yes\n3. yes\n4. no\n5. yes"]
        return ["1. yes\n2. yes\n3. yes\n4. yes\n5. no" if "GOOD" not in prompt else ALL_YES]
    if prompt.startswith("Two answers"):
        if name == "biased":
            return ["VERDICT: A"]  # always the first shown: position bias
        first = prompt.split("Answer B:")[0]
        return ["VERDICT: A" if "GOOD" in first else "VERDICT: B"]
    raise AssertionError(f"unexpected prompt: {prompt[:80]}")


SNIPPETS = [{"id": name, "language": t["language"], "path": f"src/{name}",
             "content": f"# TASK:{name}\n" if t["language"] == "python" else f"// TASK:{name}\n"} for name, t in
            TASKS.items()] + [{"id": "rusty", "path": "src/lib.rs", "content": "fn main() {} // TASK:rust"}]


@pytest.fixture(scope="module")
def run(standin, tmp_path_factory):
    missing = [lang for lang in ("python", "javascript", "cpp") if toolchain_problem(lang)]
    if missing:
        pytest.skip(f"toolchains missing: {missing}")
    standin.reset(answer=scripted)
    tmp = tmp_path_factory.mktemp("synth")
    (tmp / "snippets.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SNIPPETS))
    (tmp / "bench.jsonl").write_text(json.dumps({"question": BENCH_TEXT.capitalize() + "."}) + "\n")
    out = tmp / "out"
    argv = ["--input", str(tmp / "snippets.jsonl"), "--output", str(out), "--url", standin.url, "--model", "tiny",
            "--judge-model", "tiny-judge", "--samples", "3", "--concurrency", "4", "--workers", "2",
            "--run-timeout", "2", "--timeout", "10", "--benchmarks", f"bench={tmp / 'bench.jsonl'}", "--no-progress",
            "--isolation", "bwrap" if bwrap_problem() is None else "none"]
    first = cli.main([*argv, "--max-requests", "12"])  # "killed" part-way through answers+tests
    after_first = sum(standin.attempts.values())
    second = cli.main(argv)
    return dict(out=out, first=first, after_first=after_first, second=second, attempts=Counter(standin.attempts),
                report=json.loads((out / "report.json").read_text()),
                **{name: [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
                   for name in ("sft", "dpo", "drops", "records")})


def by_task(records, key="source_id"):
    return {r[key]: r for r in records}


def test_rerun_after_stop_sends_no_request_twice(run):
    assert run["first"] == 3 and run["after_first"] == 12 and run["second"] == 0
    assert max(run["attempts"].values()) == 1  # every request reached the server exactly once
    requests = run["report"]["requests"]
    assert requests["from_cache"] >= 12 and requests["sent_new"] == sum(run["attempts"].values()) - 12
    cache_keys = [json.loads(line)["key"] for line in (run["out"] / "cache.jsonl").read_text().splitlines()]
    assert sorted(cache_keys) == sorted(run["attempts"])  # each answered request cached once


def test_answer_outcomes_are_the_scripted_ones(run):
    answers = [r for r in run["records"] if r["step"] == "answer"]
    found = {(r["source_id"], r["index"]): r["outcome"] for r in answers}
    expected = {(name, i): o for name, t in TASKS.items() for i, o in enumerate(t["outcomes"])}
    assert found == expected


def sandbox_status(sandbox, run, provenance, code_fenced):
    tests = {r["request_key"]: r["code"] for r in run["records"] if r["step"] == "tests"}[provenance["tests_key"]]
    language = provenance["language"]
    code = code_fenced.split("\n", 1)[1].rsplit("\n```", 1)[0]
    return sandbox.run(assemble(code, tests, language), language).status


def test_every_sft_answer_and_chosen_passes_every_rejected_fails(run, synth_sandbox):
    assert {r["provenance"]["source_id"] for r in run["sft"]} == {"sum_list", "is_even", "square_cpp"}
    for record in run["sft"]:
        assert sandbox_status(synth_sandbox, run, record["provenance"], record["messages"][1]["content"]) == \
            Status.PASSED
        assert normalize_messages(record["messages"])  # the `sft` mode's input
    sft = {r["provenance"]["source_id"]: r for r in run["sft"]}
    assert sft["sum_list"]["provenance"]["answer_index"] == 2 and sft["sum_list"]["score"] == 1.0  # best scored
    pairs = {r["provenance"]["source_id"]: r for r in run["dpo"]}
    assert set(pairs) == {"sum_list", "square_cpp", "judged"}
    for name in ("sum_list", "square_cpp"):
        p = pairs[name]
        assert p["provenance"]["pair_source"] == "execution"
        assert sandbox_status(synth_sandbox, run, p["provenance"], p["chosen"]) == Status.PASSED
        assert sandbox_status(synth_sandbox, run, p["provenance"], p["rejected"]) != Status.PASSED
    assert pairs["judged"]["provenance"]["pair_source"] == "judge" and "GOOD" in pairs["judged"]["chosen"]
    for p in run["dpo"]:
        prompt, chosen, rejected = pair_messages(p)  # the `dpo` mode's input
        assert prompt[-1]["role"] == "user" and chosen != rejected


def test_drops_and_report_add_up(run):
    report = run["report"]
    assert check_report(report) == [] and report["consistent"]
    assert report["snippets"] == {"total": 9, "instructions": 8, "dropped": {"unsupported_language": 1}}
    assert report["sft"]["written"] == len(run["sft"]) == 3
    assert report["dpo"]["written"] == len(run["dpo"]) == 3
    assert report["answers"]["total"] == 8 * 3 == report["answers"]["kept"] + sum(report["answers"]["dropped"].values())
    for level in ("snippet", "answer", "sft", "dpo"):
        part = {"snippet": "snippets", "answer": "answers"}.get(level, level)
        assert dict(Counter(d["reason"] for d in run["drops"] if d["level"] == level)) == report[part]["dropped"]
    assert by_task([d for d in run["drops"] if d["level"] == "sft"]) .keys() == \
        {"max_js", "lowscore", "judged", "biased", "contaminated"}
    sft_drops = {d["source_id"]: d["reason"] for d in run["drops"] if d["level"] == "sft"}
    assert sft_drops == {"max_js": "no_passing_answer", "lowscore": "no_passing_answer", "judged": "no_tests",
                         "biased": "no_tests", "contaminated": "contaminated:bench"}
    dpo_drops = {d["source_id"]: d["reason"] for d in run["drops"] if d["level"] == "dpo"}
    assert dpo_drops == {"is_even": "no_failing_answer", "max_js": "no_passing_answer",
                         "lowscore": "no_passing_answer", "biased": "judge_disagreed",
                         "contaminated": "contaminated:bench"}
    assert "counts add up: yes" in (run["out"] / "report.txt").read_text()


def test_provenance(run):
    keys = set(run["attempts"])
    for record in run["sft"] + run["dpo"]:
        prov = record["provenance"]
        assert prov["model"] == "tiny" and prov["judge_model"] == "tiny-judge"
        assert {prov["instruction_key"], prov["answer_key"], prov["tests_key"], prov["score_key"]} <= keys
    for r in run["records"]:
        assert r["request_key"] in keys and r["model"] in ("tiny", "tiny-judge")


def test_both_orders_rule_with_a_judge_that_always_prefers_the_first():
    """A judge that always says A agrees with itself under swapping never: no pairs at all."""
    asked = []

    def always_first(a: str, b: str):
        asked.append((a, b))
        return f"k{len(asked)}", "A"

    answers = [f"answer {i}" for i in range(6)]
    verdicts = [both_orders(always_first, x, y) for x in answers for y in answers if x != y]
    assert all(v.winner is None for v in verdicts) and len(asked) == 2 * len(verdicts)
    assert both_orders(lambda a, b: ("k", "A" if "good" in a else "B"), "good", "bad").winner == 0
    assert both_orders(lambda a, b: ("k", "A" if "good" in a else "B"), "bad", "good").winner == 1


@pytest.mark.parametrize("mode", ["sft", "dpo"])
def test_outputs_are_what_the_preprocess_modes_read(run, mode, tok, tmp_path, monkeypatch):
    """sft.jsonl and dpo.jsonl go through `preprocess --mode sft|dpo` whole: every record one document."""
    import megatron_qwen.data.preprocess.pipeline as preprocess
    from megatron_qwen.data.preprocess.cli import build_parser

    monkeypatch.setattr(preprocess, "load_tokenizer", lambda *a, **k: tok)
    options = build_parser().parse_args(["--mode", mode, "--input", str(run["out"] / f"{mode}.jsonl"),
                                         "--output-prefix", str(tmp_path / mode), "--tokenizer", "unused",
                                         "--no-progress", "--workers", "1"])
    report = preprocess.run(options)
    assert report["documents"] == len(run[mode]) == 3 and not report["skipped"].get("by_reason")
    assert report["sequences"] == (6 if mode == "dpo" else 3)


def test_real_kill_then_rerun_resends_only_what_was_never_answered(standin, tmp_path):
    """SIGKILL of a real `megatron-qwen synth` process while requests hang at the server: every request
    whose answer reached the cache is never sent again; only those in flight at the kill are resent."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    answered, release, lock = [0], threading.Event(), threading.Lock()

    def stalls_after_10(body):
        with lock:
            answered[0] += 1
            stall = answered[0] > 10
        if stall:
            release.wait(30)  # hang: the kill comes while these are in flight
        return scripted(body)

    standin.reset(answer=stalls_after_10)
    (tmp_path / "snippets.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SNIPPETS))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "snippets.jsonl"), "--output", str(out), "--url", standin.url, "--model", "tiny",
            "--samples", "3", "--concurrency", "3", "--run-timeout", "2", "--benchmarks", "--no-progress",
            "--isolation", "bwrap" if bwrap_problem() is None else "none"]
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "megatron_qwen", "synth", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = out / "cache.jsonl"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # 10 answers cached, and 3 more requests hanging at the server
            lines = cache.read_text().count("\n") if cache.exists() else 0
            if lines >= 10 and sum(standin.attempts.values()) >= 13:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the run did not reach 10 cached answers")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        release.set()
    cached_keys = {json.loads(line)["key"] for line in cache.read_text().splitlines()}
    in_flight = set(standin.attempts) - cached_keys
    assert len(cached_keys) == 10 and len(in_flight) == 3
    before = Counter(standin.attempts)
    standin.reset(answer=scripted)
    assert cli.main(argv) == 0
    resent = {k for k in standin.attempts if k in before}
    assert resent == in_flight  # the hung requests only: nothing answered and cached is sent again
    assert max(standin.attempts.values()) == 1
    assert json.loads((out / "report.json").read_text())["consistent"]
