"""`megatron-qwen preprocess` and `megatron-qwen train-tokenizer` as a user runs them (subprocesses, 2 workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_qwen.data.indexed import read_documents

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_qwen", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_tokenizer_then_preprocess_file_mode_with_workers(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sources = {f"m{k}.py": f"def f{k}(x):\n    '''<|fim_prefix|> stays text'''\n    return x * {k} + {k}\n" * 4
               for k in range(40)}
    for name, text in sources.items():
        (corpus / name).write_text(text)
    tok_dir = tmp_path / "tok"
    r = _run("train-tokenizer", "--input", str(corpus), "--output-dir", str(tok_dir), "--vocab-size", "400")
    assert r.returncode == 0, r.stderr[-2000:]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in sources.values()) + "{broken\n")
    prefix = tmp_path / "out" / "code"
    r = _run("preprocess", "--mode", "file", "--input", str(jsonl), "--output-prefix", str(prefix),
             "--tokenizer", str(tok_dir), "--workers", "2", "--fim-rate", "0.5", "--chunk-bytes", "2000")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "doc/s" in r.stderr and "tok/s" in r.stderr  # the progress bar shows both rates
    report = json.loads((tmp_path / "out" / "code_report.json").read_text())
    assert report["documents"] == 40 and report["skipped"]["by_reason"] == {"malformed JSON": 1}
    assert report["encoder"] == "gigatoken"
    docs = read_documents(prefix.with_name("code_text_document"))
    assert len(docs) == 40 and docs[0].dtype == np.uint16  # 422 entries: uint16 like Megatron
    from megatron_qwen.data.tokenizer.qwen import load_tokenizer

    eod = load_tokenizer(tok_dir).eod
    assert eod == json.loads((tok_dir / "tokenizer.json").read_text())["added_tokens"][0]["id"]
    assert all(d[-1] == eod for d in docs)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "code_report.json", "code_text_document.bin", "code_text_document.idx"]


def test_cli_rejects_bad_flags_with_clear_errors(tmp_path):
    r = _run("preprocess", "--mode", "file", "--input", "x.jsonl", "--output-prefix",
             str(tmp_path / "o"), "--tokenizer", "t", "--fim-rate", "1.5")
    assert r.returncode != 0 and "--fim-rate must be in [0, 1]" in r.stderr


def test_preprocessing_imports_neither_torch_nor_transformers(qwen_tokenizer_dir, tmp_path):
    """The start-up budget: no torch, no transformers on the preprocessing path (gigatoken is proven exact),
    also for SFT (the system prompt 'auto' renders the chat template without transformers)."""
    jsonl, chats = tmp_path / "in.jsonl", tmp_path / "chat.jsonl"
    jsonl.write_text(json.dumps({"text": "def f(x):\n    return '<|endoftext|>' + x\n"}) + "\n{broken\n")
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n")
    code = (
        "import sys, json\n"
        "from megatron_qwen.data.preprocess.cli import main\n"
        f"main(['--mode', 'file', '--input', {str(jsonl)!r}, '--output-prefix', {str(tmp_path / 'o')!r}, "
        f"'--tokenizer', {str(qwen_tokenizer_dir)!r}, '--workers', '2', '--fim-rate', '0', '--no-progress'])\n"
        f"main(['--mode', 'sft', '--input', {str(chats)!r}, '--output-prefix', {str(tmp_path / 's')!r}, "
        f"'--tokenizer', {str(qwen_tokenizer_dir)!r}, '--no-progress'])\n"  # the chat template, rendered
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'nltk') if m in sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    report = json.loads((tmp_path / "o_report.json").read_text())
    assert report["encoder"] == "gigatoken" and report["skipped"]["by_reason"] == {"malformed JSON": 1}
    assert max(read_documents(tmp_path / "o_text_document")[0][:-1]) < 151643  # literal control text stayed text
    assert json.loads((tmp_path / "s_report.json").read_text())["documents"] == 1
