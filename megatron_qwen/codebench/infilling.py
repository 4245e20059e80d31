"""Single-line infilling built from HumanEval, the way HumanEval-SingleLineInfilling was built: every
non-blank line of a canonical solution becomes one task whose middle is that line, prefix = prompt + the
solution lines before it, suffix = the lines after it.
From the 164 problems this gives 1033 tasks, the published size of that benchmark.

Exact match (defined here, used throughout):
    the completion is cut at its first newline (a single-line task takes one line), then
    exact_match = completion_line.rstrip() == middle.rstrip()
i.e. trailing whitespace (including the line's newline) is ignored, leading whitespace (indentation,
which is syntax in Python) is compared.
Execution: prefix + completion_line + "\\n" + suffix is run with the HumanEval tests; passed = exit 0.

Qwen2.5-Coder's fill-in-the-middle format is PSM (prefix, suffix, middle):
    <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>
with token ids 151659 (<|fim_prefix|>), 151661 (<|fim_suffix|>), 151660 (<|fim_middle|>).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_qwen.codebench.humaneval import check_suffix, read_humaneval_problems
from megatron_qwen.codebench.tasks import ExecTask

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
FIM_TOKEN_IDS = {FIM_PREFIX: 151659, FIM_SUFFIX: 151661, FIM_MIDDLE: 151660}


@dataclass(frozen=True)
class InfillTask:
    """One fill-in-the-middle task. `exec_task` (when the format has tests) runs prefix+middle+suffix."""

    task_id: str
    prefix: str
    suffix: str
    middle: str
    exec_task: ExecTask | None = None


def render_fim(prefix: str, suffix: str) -> str:
    """Qwen2.5-Coder's PSM prompt; the model generates the middle after <|fim_middle|>."""
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def first_line(completion: str) -> str:
    """The part of a completion a single-line task scores: everything before the first newline."""
    return completion.split("\n", 1)[0]


def exact_match(completion: str, middle: str, *, single_line: bool = True) -> bool:
    """The exact-match rule of the module docstring (single_line=False: whole completion, rstripped)."""
    candidate = first_line(completion) if single_line else completion
    return candidate.rstrip() == middle.rstrip()


def single_line_tasks(path: str | Path | None = None) -> list[InfillTask]:
    """The 1033 single-line infilling tasks, ids `SingleLineInfilling/HumanEval/<n>/L<i>` where i counts
    the solution's lines from 0 (blank lines included in the count, never a task)."""
    tasks = []
    for problem in read_humaneval_problems(path).values():
        lines = problem["canonical_solution"].splitlines(keepends=True)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            prefix = problem["prompt"] + "".join(lines[:i])
            suffix = "".join(lines[i + 1 :])
            task_id = f"SingleLineInfilling/{problem['task_id']}/L{i}"
            exec_task = ExecTask(
                task_id=task_id, language="python", prompt=render_fim(prefix, suffix), program_prefix=prefix,
                program_suffix="\n" + suffix + check_suffix(problem), reference=line.rstrip("\n"), single_line=True,
            )  # fmt: skip
            tasks.append(InfillTask(task_id, prefix, suffix, line, exec_task))
    return tasks
