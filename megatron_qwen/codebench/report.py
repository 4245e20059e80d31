"""Write an evaluation's results (results.json, samples.jsonl) and print them as a readable table."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def write_results(output_dir: str | Path, summary: dict[str, object], records: Iterable[dict[str, object]]) -> None:
    """results.json: the summary (pass@k, per-task results); samples.jsonl: one record per sample (prompt,
    completion, status, output). Written to temporary names and renamed, so a crash leaves no half file."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "results.json", json.dumps(summary, indent=2) + "\n")
    _atomic_write(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.2f}%"
    return str(value)


def format_table(summary: dict[str, object], title: str) -> str:
    """Metric | value rows: pass@k (n/a when some task has fewer than k samples), exact match and edit
    similarity where measured, then the count of each status."""
    rows: list[tuple[str, str]] = [("tasks", _fmt(summary.get("n_tasks"))), ("samples", _fmt(summary.get("n_samples")))]
    for name, value in dict(summary.get("pass_at_k") or {}).items():  # type: ignore[call-overload]
        rows.append((name, _fmt(value)))
    for name in ("exact_match", "edit_similarity"):
        if name in summary:
            rows.append((name.replace("_", " "), _fmt(summary[name])))
    for status, count in dict(summary.get("status_counts") or {}).items():  # type: ignore[call-overload]
        rows.append((f"status {status}", str(count)))
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = "-" * (width + value_width + 3)
    lines = [title, rule] + [f"{name:<{width}} | {value:>{value_width}}" for name, value in rows] + [rule]
    return "\n".join(lines)
