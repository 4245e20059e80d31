"""What every benchmark reader produces: execution tasks (a completion is spliced between a fixed code
prefix and suffix and run) and match tasks (a completion is compared with a reference), plus the JSONL
reading every format shares, with errors that name the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_qwen.platform import jsonl


class BenchmarkFormatError(ValueError):
    """A benchmark or samples file that cannot be read: the message starts with `file:line:`."""


@dataclass(frozen=True)
class ExecTask:
    """A task scored by running `program(completion)` in the sandbox; passed = exit code 0."""

    task_id: str
    language: str
    prompt: str
    """What a model is given (kept in the per-sample records)."""
    program_prefix: str
    program_suffix: str
    reference: str | None = None
    """A completion known to pass (HumanEval's canonical solution), when the format has one."""
    stop_tokens: tuple[str, ...] = ()
    """The completion is cut at the first of these (MultiPL-E's convention) before it is run."""
    single_line: bool = False
    """The completion is cut at its first newline (single-line infilling)."""

    def clean(self, completion: str) -> str:
        """The part of `completion` that is scored: cut at the first newline (single-line tasks) and at the
        earliest stop token."""
        if self.single_line:
            completion = completion.split("\n", 1)[0]
        cut = min((i for i in (completion.find(t) for t in self.stop_tokens if t) if i >= 0), default=-1)
        return completion[:cut] if cut >= 0 else completion

    def program(self, completion: str) -> str:
        """The program that is run for `completion`."""
        return self.program_prefix + self.clean(completion) + self.program_suffix


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL (or .jsonl.gz) file (platform/jsonl.py);
    an unreadable file, malformed lines and non-objects raise BenchmarkFormatError naming the file and line."""
    try:
        yield from jsonl.iter_jsonl(path)
    except jsonl.JsonlError as exc:
        raise BenchmarkFormatError(str(exc)) from None
    except OSError as exc:
        raise BenchmarkFormatError(f"{path}: cannot read: {exc.strerror}") from None


def field(obj: dict[str, Any], names: str | tuple[str, ...], where: str, kind: type | tuple[type, ...] = str) -> Any:
    """obj[name] for the first of `names` present, checked against `kind`; otherwise a
    BenchmarkFormatError such as `x.jsonl:3: missing field 'prompt'`."""
    names = (names,) if isinstance(names, str) else names
    for name in names:
        if name in obj:
            value = obj[name]
            if not isinstance(value, kind):
                expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
                raise BenchmarkFormatError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")
            return value
    wanted = " or ".join(repr(n) for n in names)
    raise BenchmarkFormatError(f"{where}: missing field {wanted}")


def unique_ids(tasks: list[Any], path: str | Path) -> None:
    """Duplicate task ids make samples ambiguous: refuse them."""
    seen: set[str] = set()
    for task in tasks:
        if task.task_id in seen:
            raise BenchmarkFormatError(f"{path}: duplicate task_id {task.task_id!r}")
        seen.add(task.task_id)
