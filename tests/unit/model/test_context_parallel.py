"""The load-balanced CP layout, micro-batch sharding and PackedSeqParams, exactly (no processes)."""

import pytest
import torch

from megatron_qwen.model import context_parallel as cpl


def test_layout_matches_megatron_two_chunks_per_rank():
    # 16 tokens, cp=2: chunks of 4; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2.
    assert cpl.cp_token_index(16, 0, 2).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert cpl.cp_token_index(16, 1, 2).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert cpl.cp_token_index(8, 3, 4).tolist() == [3, 4]
    assert cpl.cp_token_index(5, 0, 1).tolist() == [0, 1, 2, 3, 4]


def test_layout_agrees_with_megatron_rope_slicing():
    from megatron.core.models.common.embeddings.rope_utils import _get_thd_freqs_on_this_cp_rank

    freqs = torch.arange(24.0)[:, None]
    for rank in range(3):
        local = torch.empty(24 // 3, 1)
        expected = _get_thd_freqs_on_this_cp_rank(rank, 3, local, freqs)[:, 0].long().tolist()
        assert cpl.cp_token_index(24, rank, 3).tolist() == expected


def test_packed_layout_splits_every_document():
    cu = torch.tensor([0, 4, 12], dtype=torch.int32)
    assert cpl.cp_token_index(12, 0, 2, cu).tolist() == [0, 3, 4, 5, 10, 11]
    assert cpl.cp_token_index(12, 1, 2, cu).tolist() == [1, 2, 6, 7, 8, 9]
    union = torch.cat([cpl.cp_token_index(12, r, 2, cu) for r in range(2)])
    assert sorted(union.tolist()) == list(range(12))
    assert cpl.document_ids(cu, 12).tolist() == [0] * 4 + [1] * 8


def test_uneven_document_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="multiple of 2 x context_parallel_size"):
        cpl.cp_token_index(10, 0, 2, torch.tensor([0, 6, 10]))
    with pytest.raises(ValueError, match="must start at 0 and end at the sequence length"):
        cpl.cp_token_index(12, 0, 2, torch.tensor([0, 8]))


def test_shard_batch_slices_sequence_keys_and_mask_rows():
    s = 8
    batch = dict(tokens=torch.arange(2 * s).view(2, s), labels=torch.arange(2 * s).view(2, s) + 100,
                 loss_mask=torch.ones(2, s), position_ids=torch.arange(s).expand(2, s),
                 attention_mask=torch.ones(1, 1, s, s, dtype=torch.bool).triu(1))
    out = cpl.shard_batch_for_cp(batch, 1, 2)
    assert out["tokens"].tolist() == [[2, 3, 4, 5], [10, 11, 12, 13]]
    assert out["labels"][0].tolist() == [102, 103, 104, 105]
    assert out["position_ids"][0].tolist() == [2, 3, 4, 5]
    assert out["attention_mask"].shape == (1, 1, 4, s)
    assert out["attention_mask"][0, 0, 0].tolist() == [False] * 3 + [True] * 5  # query 2 sees keys 0..2
    assert batch["tokens"].shape == (2, s)  # input untouched
    assert cpl.shard_batch_for_cp(batch, 0, 1)["tokens"] is batch["tokens"]


def test_packed_batch_gets_thd_params_and_no_mask():
    docs = [torch.arange(6), torch.arange(10)]  # 5 and 9 tokens -> padded to 8 and 12 with multiple 4
    packed = cpl.pack_documents(docs, multiple=4)
    assert packed["cu_seqlens"].tolist() == [0, 8, 20]
    assert packed["position_ids"][0].tolist() == list(range(8)) + list(range(12))
    assert packed["loss_mask"][0].tolist() == [1] * 5 + [0] * 3 + [1] * 9 + [0] * 3
    assert packed["labels"][0, :5].tolist() == [1, 2, 3, 4, 5]
    out = cpl.shard_batch_for_cp(packed, 0, 2)
    p = out["packed_seq_params"]
    assert p.qkv_format == "thd" and p.max_seqlen_q == p.max_seqlen_kv == 12
    assert p.cu_seqlens_q.dtype == torch.int32 and p.cu_seqlens_q_padded.tolist() == [0, 8, 20]
    assert out["attention_mask"] is None and out["tokens"].shape == (1, 10)
    assert out["position_ids"][0].tolist() == [0, 1, 6, 7, 0, 1, 2, 9, 10, 11]
    with pytest.raises(ValueError, match="one row"):
        cpl.shard_batch_for_cp(dict(packed, tokens=torch.zeros(2, 20, dtype=torch.long)), 0, 2)
