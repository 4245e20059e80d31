"""Data workers change where micro-batches are built, never which: 0 and 2 workers give identical batches,
in the same order, from any start step, for plain [S] samples (causal mask) and packed SFT rows (cu_seqlens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_qwen.config import Config
from megatron_qwen.training.datasets.loader import StepBatches
from megatron_qwen.training.datasets.sampling import microbatches
from megatron_qwen.training.datasets.sft import PackedSFTDataset, SFTSource
from tests.unit.training._toy import write_sft

SEQ = 16


class Numbered:
    """Sample i: tokens i, i+1, ... (so a wrong index shows), plus a loss mask with a hole."""

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, i: int) -> dict:
        tokens = np.arange(i, i + SEQ, dtype=np.int64) % 512
        return {"tokens": tokens, "labels": (tokens + 1) % 512, "loss_mask": (np.arange(SEQ) % 5 != 0).astype(np.float32)}


def cfg(workers: int, iters: int = 4, gbs: int = 8, mbs: int = 2) -> Config:
    c = Config()
    c.data.seq_length, c.data.num_workers = SEQ, workers
    c.train.train_iters, c.train.global_batch_size, c.train.micro_batch_size = iters, gbs, mbs
    return c


def run(source, workers: int, start: int = 0, dp_rank: int = 0, dp: int = 1) -> list[list[dict]]:
    batches = StepBatches(source, cfg(workers), dp_rank, dp, start)
    try:
        return [batches.next(step) for step in range(start, 4)]
    finally:
        batches.close()


def assert_same(a, b):
    assert len(a) == len(b)
    for step_a, step_b in zip(a, b):
        assert len(step_a) == len(step_b)
        for x, y in zip(step_a, step_b):
            assert x.keys() == y.keys()
            for key in x:
                if torch.is_tensor(x[key]):
                    assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
                elif key == "packed_seq_params":
                    assert torch.equal(x[key].cu_seqlens_q, y[key].cu_seqlens_q)
                    assert x[key].max_seqlen_q == y[key].max_seqlen_q
                else:
                    assert x[key] == y[key], key


@pytest.mark.parametrize("dp_rank,dp,start", [(0, 1, 0), (1, 2, 1)])
def test_two_workers_give_the_batches_zero_workers_give(dp_rank, dp, start):
    inline, workers = run(Numbered(), 0, start, dp_rank, dp), run(Numbered(), 2, start, dp_rank, dp)
    assert_same(inline, workers)
    # and zero workers is the sampler itself: step k reads global samples [k·G, (k+1)·G)
    first = microbatches(Numbered(), start * 8, 8, 2, dp_rank, dp, SEQ)
    assert_same([first], inline[:1])
    assert inline[0][0]["tokens"][0, 0].item() == start * 8 + dp_rank * (8 // dp)
    assert inline[0][0]["attention_mask"].shape == (1, 1, SEQ, SEQ)


def test_packed_rows_travel_through_workers(tmp_path):
    ds = PackedSFTDataset(write_sft(str(tmp_path / "sft"), 60, seed=3, max_len=4), SEQ, 0)
    source = SFTSource([ds], [1.0], 64, packed=True)
    inline, workers = run(source, 0), run(source, 2)
    assert inline[0][0]["attention_mask"] is None and "packed_seq_params" in inline[0][0]
    assert_same(inline, workers)


def test_steps_must_be_asked_for_in_order():
    batches = StepBatches(Numbered(), cfg(0), 0, 1, 2)
    with pytest.raises(RuntimeError, match="step 2 expected"):
        batches.next(3)
