"""Readers of the standard JSONL formats of MBPP, MultiPL-E and HumanEval-style FIM. Each returns tasks
(see tasks.py); a missing or mistyped field is a BenchmarkFormatError naming the file, line and field.

Programs (what is run for a completion):
  MBPP       completion + "\\n" + test_setup_code + "\\n" + test_list joined by newlines
             (MBPP's completion is a whole program; `code` is its reference solution)
  MultiPL-E  prompt + completion cut at the first stop token + "\\n" + tests, in the row's language
  FIM        prefix + completion + suffix + "\\n" + test (+ "\\ncheck(entry_point)\\n" when given)
"""

from __future__ import annotations

from pathlib import Path

from megatron_qwen.codebench.infilling import InfillTask, render_fim
from megatron_qwen.codebench.tasks import BenchmarkFormatError, ExecTask, field, iter_jsonl, unique_ids

# MultiPL-E's language codes -> sandbox languages.
MULTIPLE_LANGUAGES = {"py": "python", "python": "python", "js": "javascript", "javascript": "javascript",
                      "java": "java", "cpp": "cpp"}  # fmt: skip


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """MBPP's standard prompt: the task and its tests."""
    return f"You are an expert Python programmer, and here is your task: {text} " + (
        "Your code should pass these tests:\n\n" + "\n".join(tests) + "\n"
    )


def read_mbpp(path: str | Path) -> list[ExecTask]:
    """MBPP rows: task_id (int or str), text, code, test_list (list of asserts), test_setup_code."""
    tasks = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        task_id = field(obj, "task_id", where, (int, str))
        text, code = field(obj, "text", where), field(obj, "code", where)
        tests = field(obj, "test_list", where, list)
        if not all(isinstance(t, str) for t in tests):
            raise BenchmarkFormatError(f"{where}: field 'test_list' must be a list of strings")
        setup = field(obj, "test_setup_code", where) if "test_setup_code" in obj else ""
        suffix = "\n" + setup + "\n" + "\n".join(tests) + "\n"
        tasks.append(ExecTask(str(task_id), "python", mbpp_prompt(text, tests), "", suffix, reference=code))
    unique_ids(tasks, path)
    return tasks


def read_multipl_e(path: str | Path) -> list[ExecTask]:
    """MultiPL-E rows: name, language, prompt, tests, stop_tokens; languages py, js, java, cpp."""
    tasks = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        name, language = field(obj, "name", where), field(obj, "language", where)
        if language not in MULTIPLE_LANGUAGES:
            supported = ", ".join(sorted(MULTIPLE_LANGUAGES))
            raise BenchmarkFormatError(f"{where}: unsupported language {language!r} (supported: {supported})")
        prompt, tests = field(obj, "prompt", where), field(obj, "tests", where)
        stops = field(obj, "stop_tokens", where, list)
        if not all(isinstance(s, str) for s in stops):
            raise BenchmarkFormatError(f"{where}: field 'stop_tokens' must be a list of strings")
        tasks.append(ExecTask(name, MULTIPLE_LANGUAGES[language], prompt, prompt, "\n" + tests, stop_tokens=tuple(stops)))
    unique_ids(tasks, path)
    return tasks


def read_fim(path: str | Path, *, single_line: bool = False) -> list[InfillTask]:
    """HumanEval-infilling-style rows: task_id, prompt (or prefix), suffix, canonical_solution (or
    middle), optional test/tests and entry_point. With tests, each task also gets an execution task."""
    tasks = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        task_id = field(obj, "task_id", where, (str, int))
        prefix, suffix = field(obj, ("prompt", "prefix"), where), field(obj, "suffix", where)
        middle = field(obj, ("canonical_solution", "middle"), where)
        exec_task = None
        if "test" in obj or "tests" in obj:
            test = field(obj, ("test", "tests"), where)
            check = f"\ncheck({field(obj, 'entry_point', where)})\n" if "entry_point" in obj else "\n"
            exec_task = ExecTask(
                str(task_id), "python", render_fim(prefix, suffix), prefix, suffix + "\n" + test + check,
                reference=middle, single_line=single_line,
            )  # fmt: skip
        tasks.append(InfillTask(str(task_id), prefix, suffix, middle, exec_task))
    unique_ids(tasks, path)
    return tasks
