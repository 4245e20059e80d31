"""Single-line infilling from HumanEval: the 1033 tasks, their exact reconstruction, the PSM rendering,
the exact-match rule, and execution scoring of canonical vs wrong middles."""

from __future__ import annotations

import pytest

from megatron_qwen.codebench.infilling import FIM_TOKEN_IDS, exact_match, render_fim, single_line_tasks
from megatron_qwen.codebench.samples import Sample
from megatron_qwen.codebench.score import score_exec, summarize


@pytest.fixture(scope="module")
def sl_tasks(human_eval_problems):
    return single_line_tasks()


def test_1033_tasks_that_reassemble_the_solutions(sl_tasks, human_eval_problems) -> None:
    assert len(sl_tasks) == 1033  # the size of the published HumanEval-SingleLineInfilling
    assert len({t.task_id for t in sl_tasks}) == 1033
    for task in sl_tasks:
        problem = human_eval_problems[task.task_id.split("/", 1)[1].rsplit("/", 1)[0]]
        assert task.prefix + task.middle + task.suffix == problem["prompt"] + problem["canonical_solution"]
        assert task.middle.strip() and task.middle.count("\n") <= 1
    first = sl_tasks[0]
    assert first.task_id == "SingleLineInfilling/HumanEval/0/L0"
    assert first.middle == "    for idx, elem in enumerate(numbers):\n"


def test_qwen_psm_rendering() -> None:
    assert render_fim("def f():\n", "\n    return x\n") == (
        "<|fim_prefix|>def f():\n<|fim_suffix|>\n    return x\n<|fim_middle|>"
    )
    assert FIM_TOKEN_IDS == {"<|fim_prefix|>": 151659, "<|fim_suffix|>": 151661, "<|fim_middle|>": 151660}


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("    return x\n", True),
        ("    return x   \t", True),  # trailing whitespace ignored
        ("    return x\n    more code\n", True),  # only the first line is the answer
        ("return x", False),  # indentation is compared
        ("    return  x", False),
        ("\n    return x", False),  # an empty first line is the answer, and it is wrong
    ],
)
def test_exact_match_rule(completion: str, expected: bool) -> None:
    assert exact_match(completion, "    return x\n") is expected


def test_execution_scoring(sl_tasks, bench_sandbox) -> None:
    """Canonical middles pass and match exactly; `pass` in place of a `return` line fails; a
    differently written but equivalent line passes without matching exactly."""
    tasks = [t for t in sl_tasks if t.task_id.startswith(("SingleLineInfilling/HumanEval/0/", "SingleLineInfilling/HumanEval/2/"))]
    exec_tasks = [t.exec_task for t in tasks]
    samples = [Sample(t.task_id, t.middle + "garbage after the line\n", 0, i) for i, t in enumerate(tasks)]
    returns = [t for t in tasks if t.middle.strip().startswith("return")]
    samples += [Sample(t.task_id, t.middle[: len(t.middle) - len(t.middle.lstrip())] + "pass", 1, 0) for t in returns]
    # HumanEval/2 is `return number % 1.0`: an equivalent spelling.
    samples.append(Sample("SingleLineInfilling/HumanEval/2/L0", "    return number - int(number)", 2, 0))
    records = score_exec(exec_tasks, samples, bench_sandbox, workers=2,
                         exact=lambda task, c: exact_match(c, task.reference or ""))  # fmt: skip
    canonical, broken, equivalent = records[: len(tasks)], records[len(tasks) : -1], records[-1]
    assert all(r.passed and r.exact_match for r in canonical), [r for r in canonical if not r.passed][:1]
    assert broken and all(not r.passed and not r.exact_match for r in broken)
    assert equivalent.passed and not equivalent.exact_match
    summary = summarize(records, [1])
    assert 0 < summary["exact_match"] < 1
