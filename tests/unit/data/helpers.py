"""Helpers of the data tests: standard-library texts, JSONL writing, and one preprocessing run."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

from megatron_qwen.data.preprocess.cli import build_parser
from megatron_qwen.data.preprocess.pipeline import run

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_texts(limit: int, min_chars: int = 200) -> list[str]:
    """Deterministic sample of Python standard library sources (real code, always on the machine)."""
    out = []
    for path in sorted(STDLIB.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="strict") if path.stat().st_size < 60_000 else ""
        if len(text) >= min_chars:
            out.append(text)
        if len(out) == limit:
            break
    return out


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def run_mode(tokenizer_dir, tmp_path: Path, mode: str, records: list | None = None, *extra: str, name: str = "out"):
    """Run the preprocessor in-process (workers 1 unless given in `extra`); returns (report, prefix)."""
    args = ["--mode", mode, "--output-prefix", str(tmp_path / name), "--tokenizer", str(tokenizer_dir),
            "--no-progress"]
    if records is not None:
        args += ["--input", str(write_jsonl(tmp_path / f"{name}.jsonl", records))]
    options = build_parser().parse_args(args + list(extra))
    return run(options), tmp_path / name
