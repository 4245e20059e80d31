"""Shared test fixtures: the real Qwen tokenizer (through QWEN_TOKENIZER_DIR), a small trained one, free ports."""

import os
import socket
from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Longest first: the end-to-end tests marked slow start before the short ones, so that with two
    pytest-xdist workers (`make test`) no long test starts last and stretches the run (stable otherwise)."""
    def rank(item) -> int:
        if "test_demo" in item.nodeid:
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)
    # Every sandbox runs as the same unprivileged user, whose process limit is shared system-wide: a fork
    # bomb in one pytest worker must not starve a sandbox in the other, so these tests share one worker.
    # Multi-process and end-to-end modules keep their tests in one worker: their module-scoped fixtures
    # (single-process reference runs, trained checkpoints) are expensive and would run once per worker.
    for item in items:
        path = str(item.path)
        if "/unit/sandbox/" in path or "/unit/codebench/" in path or "/unit/synth/" in path:
            item.add_marker(pytest.mark.xdist_group("sandbox"))
        elif ("/distributed/" in path or "/integration/" in path) and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


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


@pytest.fixture(scope="session")
def qwen(qwen_tokenizer_dir):
    """The real Qwen2.5-Coder tokenizer with its verified fast path (loaded once per session)."""
    from megatron_qwen.data.tokenizer.qwen import load_tokenizer

    return load_tokenizer(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def tok(qwen_tokenizer_dir):
    """The real tokenizer with Hugging Face's raw encoder (fast=False): the reference the fast path is proven
    identical to at load time, and it loads in about a second instead of several."""
    from megatron_qwen.data.tokenizer.qwen import load_tokenizer

    return load_tokenizer(qwen_tokenizer_dir, fast=False)


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    """A 600-entry Qwen2-shaped BPE trained on two stdlib modules (+ Qwen2.5-Coder's 22 added tokens)."""
    import sysconfig

    from megatron_qwen.data.tokenizer.train import save_hf, train_bpe

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in ("json/decoder.py", "textwrap.py")]
    out = tmp_path_factory.mktemp("small_tokenizer")
    return save_hf(train_bpe(texts, vocab_size=600), out)
