"""The benchmark readers on small files written here: MBPP, MultiPL-E in its four sandbox languages,
HumanEval-style FIM, CrossCodeEval; and their errors, which name the file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from megatron_qwen.codebench.crosscodeeval import (
    edit_similarity,
    read_crosscodeeval,
    render_left_context,
    score_repo_completion,
)
from megatron_qwen.codebench.readers import read_fim, read_mbpp, read_multipl_e
from megatron_qwen.codebench.samples import Sample, read_samples
from megatron_qwen.codebench.score import score_exec
from megatron_qwen.codebench.tasks import BenchmarkFormatError, iter_jsonl
from megatron_qwen.sandbox import toolchain_problem


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


MBPP_ROWS = [
    {"task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "test_setup_code": ""},
    {"task_id": 12, "text": "Scale by the factor.", "code": "def scale(x):\n    return x * FACTOR",
     "test_list": ["assert scale(2) == 6"], "test_setup_code": "FACTOR = 3"},
]  # fmt: skip


def test_mbpp_reference_passes_wrong_fails(tmp_path, bench_sandbox) -> None:
    tasks = read_mbpp(write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS))
    assert [t.task_id for t in tasks] == ["11", "12"]
    assert "Your code should pass these tests" in tasks[0].prompt and "assert add(1, 2) == 3" in tasks[0].prompt
    samples = [Sample(t.task_id, t.reference, 0, 0) for t in tasks] + [Sample("12", "def scale(x):\n    return x", 1, 0)]
    records = score_exec(tasks, samples, bench_sandbox, workers=2)
    assert [r.passed for r in records] == [True, True, False]


MULTIPLE = {
    "py": ("def add(a: int, b: int) -> int:\n", "\ndef check(candidate):\n    assert candidate(2, 3) == 5\n\n"
           "def test_check():\n    check(add)\n\ntest_check()\n", ["\ndef", "\n#", "\nif", "\nclass"],
           "    return a + b\n\ndef unrelated(:\n"),
    "js": ("function add(a, b) {\n", "const assert = require('node:assert');\n\nfunction test() {\n"
           "  let candidate = add;\n  assert.deepEqual(candidate(2, 3), 5);\n}\n\ntest();\n",
           ["\nfunction ", "\n/*", "\n//", "\nconsole.log"], "  return a + b;\n}\nfunction broken( {\n"),
    "java": ("import java.util.*;\n\nclass Problem {\n    public static long add(long a, long b) {\n",
             "    }\n    public static void main(String[] args) {\n    assert(add((2l), (3l)) == (5l));\n    }\n\n}\n",
             ["\n    }\n"], "        return a + b;\n    }\n    not java at all\n"),
    "cpp": ("#include<assert.h>\n#include<bits/stdc++.h>\nlong add(long a, long b) {\n",
            "}\nint main() {\n    auto candidate = add;\n    assert(candidate((2), (3)) == (5));\n}\n",
            ["\n}"], "    return a + b;\n}\nnot c++ either\n"),
}  # fmt: skip


@pytest.mark.parametrize("code", ["py", "js", "java", "cpp"])
def test_multipl_e_runs_in_the_rows_language(code, tmp_path, bench_sandbox) -> None:
    language = {"py": "python", "js": "javascript", "java": "java", "cpp": "cpp"}[code]
    if toolchain_problem(language):
        pytest.skip(f"{language} toolchain missing after .ci/install_sandbox.sh: {toolchain_problem(language)}")
    prompt, tests, stops, completion = MULTIPLE[code]
    row = {"name": f"HumanEval_0_add_{code}", "language": code, "prompt": prompt, "tests": tests, "stop_tokens": stops}
    (task,) = read_multipl_e(write_jsonl(tmp_path / f"{code}.jsonl", [row]))
    assert task.language == language
    assert "not" not in task.clean(completion) and "unrelated" not in task.clean(completion)  # cut at the stop token
    wrong = completion.replace("a + b", "a - b")
    records = score_exec([task], [Sample(task.task_id, completion, 0, 1), Sample(task.task_id, wrong, 1, 2)], bench_sandbox, workers=2)
    assert [r.passed for r in records] == [True, False], records[0].output


def test_fim_reader_exec_and_exact(tmp_path, bench_sandbox) -> None:
    row = {"task_id": "FIM/0", "entry_point": "inc", "prompt": "def inc(x):\n", "suffix": "    return y\n",
           "canonical_solution": "    y = x + 1\n", "test": "def check(f):\n    assert f(1) == 2\n"}  # fmt: skip
    alt = {"task_id": "FIM/1", "prefix": "a = 1\n", "suffix": "print(b)\n", "middle": "b = a\n"}
    tasks = read_fim(write_jsonl(tmp_path / "fim.jsonl", [row, alt]))
    assert tasks[0].exec_task is not None and tasks[1].exec_task is None
    assert tasks[1].middle == "b = a\n"
    assert tasks[0].exec_task.prompt == "<|fim_prefix|>def inc(x):\n<|fim_suffix|>    return y\n<|fim_middle|>"
    samples = [Sample("FIM/0", "    y = x + 1\n", 0, 1), Sample("FIM/0", "    y = x\n", 1, 2)]
    assert [r.passed for r in score_exec([tasks[0].exec_task], samples, bench_sandbox)] == [True, False]


def test_crosscodeeval_reader_and_scores(tmp_path) -> None:
    row = {"prompt": "import util\nx = ", "right_context": "\nprint(x)\n", "groundtruth": "util.load('a')",
           "crossfile_context": {"text": "", "list": [{"retrieved_chunk": "def load(name):\n    ...",
                                                       "filename": "util.py", "score": 0.9}]},
           "metadata": {"task_id": "repo/0", "repository": "r", "file": "main.py"}}  # fmt: skip
    (task,) = read_crosscodeeval(write_jsonl(tmp_path / "cceval.jsonl", [row]))
    assert task.task_id == "repo/0" and task.crossfile[0].filename == "util.py"
    assert render_left_context(task).startswith("# the below code fragment can be found in: util.py\n# def load(name):\n")
    assert score_repo_completion("util.load('a')\nmore lines\n", task.groundtruth) == {"exact_match": 1.0, "edit_similarity": 1.0}
    scores = score_repo_completion("util.load('b')", task.groundtruth)
    assert scores["exact_match"] == 0.0 and scores["edit_similarity"] == pytest.approx(26 / 28)
    assert edit_similarity("abc", "abd") == pytest.approx(2 / 3)  # fuzz.ratio("abc", "abd") == 66.67
    assert edit_similarity("", "") == 1.0 and edit_similarity("abc", "") == 0.0


@pytest.mark.parametrize(
    ("reader", "rows", "message"),
    [
        (read_mbpp, [MBPP_ROWS[0], {k: v for k, v in MBPP_ROWS[1].items() if k != "test_list"}], ":2: missing field 'test_list'"),
        (read_mbpp, [dict(MBPP_ROWS[0], test_list="assert 1")], ":1: field 'test_list' must be list, got str"),
        (read_mbpp, [MBPP_ROWS[0], MBPP_ROWS[0]], "duplicate task_id '11'"),
        (read_multipl_e, [{"name": "x", "language": "rs", "prompt": "", "tests": "", "stop_tokens": []}], ":1: unsupported language 'rs'"),
        (read_multipl_e, [{"name": "x", "language": "py", "prompt": "", "tests": ""}], ":1: missing field 'stop_tokens'"),
        (read_fim, [{"task_id": "a", "suffix": "", "canonical_solution": ""}], ":1: missing field 'prompt' or 'prefix'"),
        (read_crosscodeeval, [{"prompt": "", "right_context": "", "groundtruth": "", "crossfile_context": {}}],
         ":1: missing field 'metadata.task_id'"),
        (read_crosscodeeval, [{"task_id": "t", "prompt": "", "right_context": "", "groundtruth": "",
                               "crossfile_context": {"list": [{"filename": "a.py"}]}}],
         ":1: crossfile_context snippet 0: missing field 'retrieved_chunk' or 'text'"),
        (read_mbpp, ['{"task_id": 1, "text": ', "{}"], ":1: malformed JSON"),
        (read_mbpp, ["[1, 2]"], ":1: expected a JSON object, got list"),
    ],
)
def test_reader_errors_name_file_line_field(reader, rows, message, tmp_path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BenchmarkFormatError) as info:
        reader(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_samples_reader(tmp_path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "A", "completion": "x"}, "", {"task_id": "A", "completion": "y", "extra": 1}])
    samples = read_samples(path, {"A"})
    assert [(s.index, s.lineno, s.completion) for s in samples] == [(0, 1, "x"), (1, 3, "y")]
    for rows, message in [
        ([{"task_id": "A"}], ":1: missing field 'completion'"),
        ([{"task_id": "A", "completion": "x"}, "{oops"], ":2: malformed JSON"),
        ([{"task_id": "B", "completion": "x"}], ":1: unknown task_id 'B'"),
        ([{"task_id": "A", "completion": 3}], ":1: field 'completion' must be str, got int"),
        ([], "no samples"),
    ]:
        bad = write_jsonl(tmp_path / "bad.jsonl", rows) if rows else tmp_path / "empty.jsonl"
        bad.touch()
        with pytest.raises(BenchmarkFormatError, match=message):
            read_samples(bad, {"A"})


def test_gzip_jsonl(tmp_path) -> None:
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]
