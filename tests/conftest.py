"""Shared test fixtures: the real Qwen tokenizer (through QWEN_TOKENIZER_DIR) and free ports."""

import os
import socket
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    """The real Qwen2.5-Coder tokenizer files; `.ci/run` points QWEN_TOKENIZER_DIR at ../shared/fixtures."""
    value = os.environ.get("QWEN_TOKENIZER_DIR")
    if not value:
        pytest.skip("QWEN_TOKENIZER_DIR is not set (point it at ../shared/fixtures/qwen2.5-coder-tokenizer)")
    path = Path(value)
    if not (path / "vocab.json").is_file():
        pytest.skip(f"QWEN_TOKENIZER_DIR={path} has no vocab.json")
    return path
