"""Fixtures for the data tests: the real tokenizer loaded once, a small trained tokenizer, a run helper."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from megatron_qwen.data.preprocess import run
from megatron_qwen.data.preprocess_cli import build_parser
from megatron_qwen.data.tokenizer import load_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def qwen(qwen_tokenizer_dir):
    """The real Qwen2.5-Coder tokenizer (loaded once per session; loading takes seconds)."""
    return load_tokenizer(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    """A 600-entry Qwen2-shaped BPE trained on two stdlib modules (+ Qwen2.5-Coder's 22 added tokens)."""
    from megatron_qwen.data.train_tokenizer import save_hf, train_bpe

    texts = [(STDLIB / name).read_text(encoding="utf-8") for name in ("json/decoder.py", "textwrap.py")]
    out = tmp_path_factory.mktemp("small_tokenizer")
    return save_hf(train_bpe(texts, vocab_size=600), out)


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
