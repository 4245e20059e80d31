"""Samples by global index: GPTDataset over an indexed dataset + blend, the mock source, DP slicing."""

from __future__ import annotations

import numpy as np
import torch

from megatron_qwen.config import DataConfig
from megatron_qwen.training.datasets.pretrain import LearnableMock, build_sources
from megatron_qwen.training.datasets.sampling import microbatches


def write_indexed(prefix: str, docs: list[list[int]]) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for doc in docs:
        builder.add_document(torch.tensor(doc, dtype=torch.int32), [len(doc)])
    builder.finalize(prefix + ".idx")


def test_gpt_dataset_over_a_blend(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_indexed(str(tmp_path / f"{name}_text_document"),
                      [list(rng.integers(1, 500, size=int(n))) + [0] for n in rng.integers(5, 60, size=200)])
    data = DataConfig(seq_length=16, blend=[3, str(tmp_path / "a_text_document"), 1, str(tmp_path / "b_text_document")],
                      split="90,10,0", eod_token_id=0, cache_dir=str(tmp_path / "cache"))
    train, valid = build_sources(data, train_samples=40, eval_samples=8, seed=1, vocab_size=512)
    assert len(train) >= 40 and len(valid) >= 8
    s = train[7]
    assert s["tokens"].shape == (16,) and s["labels"].shape == (16,)
    assert torch.equal(s["tokens"][1:], s["labels"][:-1])  # labels are the next tokens
    assert torch.equal(train[7]["tokens"], s["tokens"])  # deterministic by index


def test_dp_ranks_split_the_global_batch_contiguously():
    src = LearnableMock(512, 8, 100)
    whole = microbatches(src, 16, 8, 2, dp_rank=0, dp_size=1, seq_length=8)
    halves = [microbatches(src, 16, 8, 2, dp_rank=r, dp_size=2, seq_length=8) for r in (0, 1)]
    assert torch.equal(torch.cat([b["tokens"] for b in whole]),
                       torch.cat([b["tokens"] for h in halves for b in h]))
    assert whole[0]["attention_mask"].shape == (1, 1, 8, 8) and whole[0]["attention_mask"][0, 0, 0, 1]


def test_mock_is_learnable_structure():
    s = LearnableMock(512, 32, 10)[3]
    diffs = (s["tokens"][1:] - s["tokens"][:-1]) % 64
    assert len(set(diffs.tolist())) == 1 and int(s["tokens"].max()) < 64
