"""CrossCodeEval-style repository-level completion: the model sees the file up to the
cursor (`prompt`), optionally the rest of the file (`right_context`) and snippets retrieved from other
files of the repository (`crossfile_context`), and must produce the next line(s) (`groundtruth`).

Scoring follows the CrossCodeEval evaluation, with the rules written out:
  the prediction keeps as many non-blank lines as the groundtruth has (blank lines dropped, in both);
  exact_match     = prediction.strip() == groundtruth.strip()
  edit_similarity = 2 * LCS(p, g) / (len(p) + len(g)) on the stripped strings, i.e. the normalized
                    Indel similarity that `fuzz.ratio` (thefuzz / rapidfuzz) reports, divided by 100;
                    1.0 for two empty strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_qwen.codebench.tasks import BenchmarkFormatError, field, iter_jsonl, unique_ids


@dataclass(frozen=True)
class Snippet:
    """One retrieved cross-file snippet."""

    filename: str
    text: str
    score: float | None = None


@dataclass(frozen=True)
class RepoTask:
    task_id: str
    prompt: str
    right_context: str
    groundtruth: str
    crossfile: tuple[Snippet, ...]
    language: str = "python"


def _snippets(value: Any, where: str) -> tuple[Snippet, ...]:
    """crossfile_context: {"list": [{"retrieved_chunk", "filename", "score"}...], "text": ...}, or a plain
    list of such entries, or a string (one anonymous snippet)."""
    if isinstance(value, str):
        return (Snippet("", value),) if value else ()
    entries = value.get("list", []) if isinstance(value, dict) else value
    if not isinstance(entries, list):
        raise BenchmarkFormatError(f"{where}: field 'crossfile_context' must hold a list of snippets")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BenchmarkFormatError(f"{where}: crossfile_context snippet {i} must be an object")
        text = field(entry, ("retrieved_chunk", "text"), f"{where}: crossfile_context snippet {i}")
        out.append(Snippet(str(entry.get("filename", "")), text, entry.get("score")))
    return tuple(out)


def read_crosscodeeval(path: str | Path) -> list[RepoTask]:
    """Rows with prompt, right_context, groundtruth, crossfile_context, and metadata.task_id (or task_id)."""
    tasks = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        task_id = metadata.get("task_id", obj.get("task_id"))
        if task_id is None:
            raise BenchmarkFormatError(f"{where}: missing field 'metadata.task_id' (or 'task_id')")
        context = field(obj, "crossfile_context", where, (dict, list, str))
        tasks.append(RepoTask(
            str(task_id), field(obj, "prompt", where), field(obj, "right_context", where),
            field(obj, "groundtruth", where), _snippets(context, where), str(obj.get("language", "python")),
        ))  # fmt: skip
    unique_ids(tasks, path)
    return tasks


def render_left_context(task: RepoTask, comment: str = "#") -> str:
    """The prompt with the retrieved snippets in front, as comments (CrossCodeEval's prompt layout)."""
    blocks = []
    for snippet in task.crossfile:
        lines = [f"the below code fragment can be found in: {snippet.filename}", *snippet.text.splitlines()]
        blocks.append("\n".join(f"{comment} {line}" for line in lines))
    return "".join(block + "\n" for block in blocks) + task.prompt


def align_prediction(prediction: str, groundtruth: str) -> str:
    """Keep as many non-blank prediction lines as the groundtruth has."""
    wanted = len([line for line in groundtruth.splitlines() if line.strip()]) or 1
    return "\n".join([line for line in prediction.splitlines() if line.strip()][:wanted])


def _lcs(a: str, b: str) -> int:
    """Length of the longest common subsequence (O(len(a)*len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for ch in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if ch == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def edit_similarity(prediction: str, groundtruth: str) -> float:
    """Normalized Indel similarity of the stripped strings (see the module docstring)."""
    p, g = prediction.strip(), groundtruth.strip()
    if not p and not g:
        return 1.0
    return 2 * _lcs(p, g) / (len(p) + len(g))


def score_repo_completion(prediction: str, groundtruth: str) -> dict[str, float]:
    """{'exact_match': 0/1, 'edit_similarity': [0, 1]} of one prediction."""
    aligned = align_prediction(prediction, groundtruth)
    truth = "\n".join(line for line in groundtruth.splitlines() if line.strip())
    return {
        "exact_match": float(aligned.strip() == truth.strip()),
        "edit_similarity": edit_similarity(aligned, truth),
    }
