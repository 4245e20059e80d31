"""File-level FIM with the real tokenizer: exact ids, round trips, literal control text, FIM share."""

from __future__ import annotations

import random

import numpy as np
import pytest

from megatron_qwen.data.formats.code import (
    ControlIds,
    file_document,
    fim_pieces,
    fim_split_points,
    undo_fim_text,
)
from megatron_qwen.data.indexed import read_documents
from megatron_qwen.data.preprocess.assemble import encode_pieces
from tests.unit.data.helpers import run_mode, stdlib_texts

PRE, MID, SUF = "def add(a, b):\n    return ", "a + b", "\n"


@pytest.fixture(scope="module")
def ids(qwen):
    return ControlIds.of(qwen, repo=True)


def test_control_ids_of_real_tokenizer(ids):
    assert (ids.fim_prefix, ids.fim_suffix, ids.fim_middle, ids.repo_name, ids.file_sep, ids.eod) == (
        151659, 151661, 151660, 151663, 151664, 151643)


def test_psm_exact_ids(qwen, ids):
    got = encode_pieces(qwen, fim_pieces(PRE, MID, SUF, ids, spm=False)).tolist() + [ids.eod]
    assert got == [151659, 750, 912, 2877, 11, 293, 982, 262, 470, 220, 151661, 198, 151660, 64, 488, 293, 151643]
    # the same as the HF tokenizer on the formatted string (it recognizes the control tokens itself)
    text = f"<|fim_prefix|>{PRE}<|fim_suffix|>{SUF}<|fim_middle|>{MID}<|endoftext|>"
    assert got == qwen.hf(text, add_special_tokens=False).input_ids


def test_spm_exact_ids(qwen, ids):
    got = encode_pieces(qwen, fim_pieces(PRE, MID, SUF, ids, spm=True)).tolist() + [ids.eod]
    # prefix and middle are encoded separately ("return " + "a" stays 470, 220, 64 rather than 470, 264),
    # as at inference time, where the prompt ends with the prefix.
    assert got == [151659, 151661, 198, 151660, 750, 912, 2877, 11, 293, 982, 262, 470, 220, 64, 488, 293, 151643]


def test_split_points_are_in_range_and_line_level_hits_line_starts():
    rng = random.Random(0)
    text = "a = 1\nbb = 22\nccc = 333\n"
    starts = {0, 6, 14, len(text)}
    for _ in range(200):
        i, j = fim_split_points(text, rng, line_level=False)
        assert 0 <= i <= j <= len(text)
        i, j = fim_split_points(text, rng, line_level=True)
        assert i in starts and j in starts and i <= j


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_decode_and_undo_permutation_gives_back_the_file(qwen, ids, spm_rate):
    rng = random.Random(7)
    texts = stdlib_texts(40) + ["héllo wörld → ∑ 你好 🙂\n" * 3]
    kinds = set()
    for text in texts:
        pieces, kind = file_document(text, ids, rng, fim_rate=1.0, spm_rate=spm_rate)
        kinds.add(kind)
        tokens = encode_pieces(qwen, pieces)
        assert tokens[-1] == ids.eod and tokens[0] == ids.fim_prefix
        assert undo_fim_text(tokens, ids, qwen.decode) == text + "<|endoftext|>"
    assert kinds == {"spm" if spm_rate else "psm"}


def test_literal_control_token_text_in_a_file_stays_text(qwen, ids, tmp_path):
    source = 'PREFIX = "<|fim_prefix|>"\nEOD = "<|endoftext|>"  # <|file_sep|> <|repo_name|>\n'
    report, prefix = run_mode(qwen.path, tmp_path, "file", [{"text": source}], "--fim-rate", "1.0")
    [doc] = read_documents(f"{prefix}_text_document")
    control = [t for t in doc.tolist() if t >= 151643]
    assert control == [151659, 151661, 151660, 151643]  # only the structural ones
    assert undo_fim_text(doc, ids, qwen.decode) == source + "<|endoftext|>"
    assert report["documents"] == 1


def test_fim_share_within_two_percent_of_fim_rate(qwen, tmp_path):
    records = [{"text": f"def f{k}(x):\n    return x * {k}\n"} for k in range(3000)]
    report, prefix = run_mode(qwen.path, tmp_path, "file", records, "--fim-rate", "0.3", "--fim-spm-rate", "0.5")
    assert report["documents"] == 3000
    assert abs(report["fim_share"] - 0.3) < 0.02
    docs = read_documents(f"{prefix}_text_document")
    counted = sum(1 for d in docs if d[0] == 151659)  # recount from the written tokens, not the counter
    assert counted == report["fim_documents"]
    spm = sum(1 for d in docs if d[0] == 151659 and d[1] == 151661)
    assert abs(spm / counted - 0.5) < 0.08  # ~900 FIM documents: 0.08 is about 5 standard deviations


def test_fim_output_does_not_depend_on_workers(qwen, tmp_path):
    records = [{"text": t} for t in stdlib_texts(30)]
    _, p1 = run_mode(qwen.path, tmp_path, "file", records, "--chunk-bytes", "4096", name="w1")
    _, p2 = run_mode(qwen.path, tmp_path, "file", records, "--workers", "2", "--chunk-bytes", "20000", name="w2")
    a, b = read_documents(f"{p1}_text_document"), read_documents(f"{p2}_text_document")
    assert len(a) == len(b) == 30
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
