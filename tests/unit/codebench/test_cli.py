"""`evaluate --samples FILE ...`: writes results.json and samples.jsonl, prints a table; bad input is one
line naming the file and line, exit 2."""

from __future__ import annotations

import json

import pytest

from megatron_qwen.codebench.cli import main


def _samples(tmp_path, problems, rows=None):
    ids = list(problems)[:3]
    rows = rows or [
        {"task_id": ids[0], "completion": problems[ids[0]]["canonical_solution"]},
        {"task_id": ids[0], "completion": "    return None\n"},
        {"task_id": ids[1], "completion": problems[ids[1]]["canonical_solution"]},
        {"task_id": ids[1], "completion": problems[ids[1]]["canonical_solution"]},
        {"task_id": ids[2], "completion": "    return (\n"},
        {"task_id": ids[2], "completion": "    return None\n"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_evaluate_writes_results_and_prints_table(tmp_path, human_eval_problems, bench_sandbox, capsys) -> None:
    samples = _samples(tmp_path, human_eval_problems)
    out = tmp_path / "out"
    assert main(["--samples", str(samples), "--k", "1,2,10", "--output", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["pass_at_k"] == {"pass@1": pytest.approx(0.5), "pass@2": pytest.approx(2 / 3), "pass@10": None}
    assert results["per_task"]["HumanEval/0"] == {"n": 2, "correct": 1, "pass@1": 0.5, "pass@2": 1.0, "pass@10": None}
    assert results["status_counts"] == {"failed": 3, "passed": 3}
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 6
    assert {"prompt", "completion", "status", "output", "passed", "task_id", "sample_index"} <= set(records[0])
    assert records[4]["status"] == "failed" and "SyntaxError" in records[4]["output"]
    assert "pass@1" in printed and "50.00%" in printed and "66.67%" in printed and "n/a" in printed


def test_evaluate_single_line_infilling(tmp_path, human_eval_problems, bench_sandbox) -> None:
    rows = [{"task_id": "SingleLineInfilling/HumanEval/2/L0", "completion": "    return number % 1.0\n"},
            {"task_id": "SingleLineInfilling/HumanEval/2/L0", "completion": "    return number - int(number)"}]  # fmt: skip
    samples = _samples(tmp_path, human_eval_problems, rows)
    assert main(["--samples", str(samples), "--benchmark", "humaneval-sl", "--k", "1", "--output", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["pass_at_k"] == {"pass@1": 1.0} and results["exact_match"] == 0.5


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        (['{"task_id": "HumanEval/0", "completion": "x"}', '{"task_id": "HumanEval/0", '], [], "samples.jsonl:2: malformed JSON"),
        ([{"task_id": "HumanEval/999", "completion": ""}], [], "samples.jsonl:1: unknown task_id 'HumanEval/999'"),
        ([{"task_id": "HumanEval/0"}], [], "samples.jsonl:1: missing field 'completion'"),
        ([{"task_id": "HumanEval/0", "completion": ""}], ["--k", "1,ten"], "--k expects positive integers"),
        ([{"task_id": "HumanEval/0", "completion": ""}], ["--benchmark", "mbpp"], "--benchmark mbpp needs --problems FILE"),
        ([{"task_id": "HumanEval/0", "completion": ""}], ["--benchmark", "nope"], "argument --benchmark: invalid choice"),
    ],
)
def test_bad_input_one_line_exit_2(rows, extra, message, tmp_path, human_eval_problems, capsys) -> None:
    samples = _samples(tmp_path, human_eval_problems, rows)
    assert main(["--samples", str(samples), "--output", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_missing_samples_file(tmp_path, human_eval_problems, capsys) -> None:
    assert main(["--samples", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nope.jsonl'}: cannot read: No such file or directory\n"
