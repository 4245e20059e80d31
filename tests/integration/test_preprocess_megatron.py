"""`plain` mode writes token for token what Megatron-LM's tools/preprocess_data.py writes.

The reference is built here from Megatron's own installed components, the way its preprocess_data does it:
the tokenizer from `megatron.core.tokenizers.utils.build_tokenizer` with its own tokenizer flags
(`megatron.training.arguments._add_tokenizer_args`, HuggingFaceTokenizer), each JSON key's sentences
tokenized, EOD appended to the last sentence, and `IndexedDatasetBuilder.add_document` with
`DType.optimal_dtype(vocab_size)`. Both outputs are compared through `IndexedDataset`.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from megatron_qwen.data.tokenizer.qwen import load_tokenizer
from tests.unit.data.helpers import run_mode, stdlib_texts

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def qwen(qwen_tokenizer_dir):
    return load_tokenizer(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def megatron_tokenizer(qwen_tokenizer_dir):
    """Megatron's tokenizer, built from its own flags the way its preprocess_data builds it."""
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
    from megatron.training.arguments import _add_tokenizer_args

    args = _add_tokenizer_args(argparse.ArgumentParser()).parse_args(
        ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(qwen_tokenizer_dir)])
    args.rank, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size, args.vocab_extra_ids = 1, 128, 1, 0
    return build_tokenizer(args)


def megatron_reference(tokenizer, records: list[dict], keys: list[str], prefix: str, append_eod: bool) -> None:
    from megatron.core.datasets import indexed_dataset

    builders = {k: indexed_dataset.IndexedDatasetBuilder(
        f"{prefix}_{k}_document.bin", dtype=indexed_dataset.DType.optimal_dtype(tokenizer.vocab_size)) for k in keys}
    for record in records:
        for key in keys:
            sentences = record[key] if isinstance(record[key], list) else [record[key]]
            doc_ids, lens = [], []
            for sentence in sentences:
                ids = tokenizer.tokenize(sentence)
                if ids:
                    doc_ids.extend(ids)
                    lens.append(len(ids))
            if doc_ids and append_eod:
                doc_ids.append(tokenizer.eod)
                lens[-1] += 1
            builders[key].add_document(doc_ids, lens)
    for key in keys:
        builders[key].finalize(f"{prefix}_{key}_document.idx")


def assert_same_dataset(a: str, b: str) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    da, db = IndexedDataset(a), IndexedDataset(b)
    assert da.index.dtype == db.index.dtype
    assert len(da) == len(db), (a, da.sequence_lengths.tolist(), db.sequence_lengths.tolist())
    assert np.array_equal(da.document_indices, db.document_indices)
    assert np.array_equal(da.sequence_lengths, db.sequence_lengths)
    for k in range(len(da)):
        assert np.array_equal(da[k], db[k]), k


@pytest.mark.parametrize("append_eod", [True, False])
def test_plain_matches_megatron_preprocess_data(qwen, megatron_tokenizer, tmp_path, append_eod):
    texts = stdlib_texts(25) + ["héllo wörld — naïve café ∑ 你好 🙂 e\u0301\n", "  spaces\t\ttabs\r\n\r\n"]
    records = [{"text": t, "title": f"file {k}", "parts": [t[:50], "", t[50:120]]} for k, t in enumerate(texts)]
    keys = ["text", "title", "parts"]
    megatron_reference(megatron_tokenizer, records, keys, str(tmp_path / "ref"), append_eod)
    extra = ["--json-keys", *keys, "--workers", "2", "--chunk-bytes", "30000"] + (["--append-eod"] if append_eod else [])
    report, prefix = run_mode(qwen.path, tmp_path, "plain", records, *extra)
    for key in keys:
        assert_same_dataset(f"{prefix}_{key}_document", str(tmp_path / f"ref_{key}_document"))
    assert report["documents"] == 3 * len(records)
    with open(tmp_path / "out.jsonl") as f:
        assert sum(1 for _ in f) == len(records)
    assert json.loads((tmp_path / "out_report.json").read_text())["encoder"] == "gigatoken"
