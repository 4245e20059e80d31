"""SFT packing: bins never overflow, every conversation lands once and whole, cu_seqlens mark the boundaries."""

import numpy as np
import pytest
import torch

from megatron_qwen.data.formats.chat import encode_conversation
from megatron_qwen.training.datasets.packing import build_sample, collate_packed, pack_bins, stack_samples
from megatron_qwen.training.datasets.sft import PackedSFTDataset

PAD = 151643


def write_dataset(prefix, docs, sequences_per_doc=1):
    """Write `{prefix}_text_document` and `{prefix}_loss_mask_document` with megatron-core's own builder."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    for key, k, dtype in (("text", 0, np.int32), ("loss_mask", 1, np.uint8)):
        builder = IndexedDatasetBuilder(f"{prefix}_{key}_document.bin", dtype=dtype)
        for doc in docs:
            arr = np.asarray(doc[k], dtype=dtype)
            cut = len(arr) // 2
            lengths = [len(arr)] if sequences_per_doc == 1 else [cut, len(arr) - cut]
            builder.add_document(torch.from_numpy(arr), lengths)
        builder.finalize(f"{prefix}_{key}_document.idx")


def test_best_fit_decreasing_by_hand():
    # sizes 5,4,3,3,2,1 into 8: 5->A(3 left) 4->B(4) 3->A(0) 3->B(1) 2->C(6) 1->B(0)
    assert pack_bins([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]


def test_bins_hold_every_item_once_and_never_overflow():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(4, 1, 2000).astype(int), 1, 512)
    bins = pack_bins(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert max(lengths[b].sum() for b in bins) <= 512
    assert len(bins) <= int(np.ceil(lengths.sum() / 512) * 1.05) + 1    # near the lower bound


def test_pack_bins_rejects_items_that_cannot_fit():
    with pytest.raises(ValueError, match="item 1 has size 9, outside 1..8"):
        pack_bins([3, 9], 8)


def test_build_sample_shifts_inside_each_conversation_and_pads():
    a = (np.array([10, 11, 12]), np.array([0, 1, 1]))
    b = (np.array([20, 21, 22, 23]), np.array([0, 0, 1, 1]))
    s = build_sample([a, b], 8, pad_id=PAD)
    assert s["tokens"].tolist() == [10, 11, 20, 21, 22, PAD, PAD, PAD]
    assert s["labels"].tolist() == [11, 12, 21, 22, 23, PAD, PAD, PAD]
    assert s["loss_mask"].tolist() == [1, 1, 0, 1, 1, 0, 0, 0]
    assert s["position_ids"].tolist() == [0, 1, 0, 1, 2, 0, 1, 2]
    assert s["segment_ids"].tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert s["cu_seqlens"].tolist() == [0, 2, 5, 8]
    assert build_sample([a, (np.arange(7), np.ones(7))], 8, PAD)["cu_seqlens"].tolist() == [0, 2, 8]  # full: no pad


def test_collate_makes_one_thd_row_with_cu_seqlens_over_it():
    a = build_sample([(np.arange(4), np.ones(4))], 6, PAD)                   # cu [0, 3, 6]
    b = build_sample([(np.arange(3), np.ones(3)), (np.arange(5), np.ones(5))], 6, PAD)  # cu [0, 2, 6]
    batch = collate_packed([a, b])
    assert batch["tokens"].shape == (1, 12) and batch["tokens"].dtype == torch.int64
    assert batch["tokens"][0].tolist() == [0, 1, 2, PAD, PAD, PAD, 0, 1, 0, 1, 2, 3]
    assert batch["cu_seqlens"].tolist() == [0, 3, 6, 8, 12]
    assert batch["max_seqlen"] == 4
    stacked = stack_samples([a, b])
    assert stacked["tokens"].shape == (2, 6) and "cu_seqlens" not in stacked


def test_segments_padded_to_a_multiple_for_context_parallelism():
    from megatron_qwen.model.context_parallel import cp_token_index, document_ids

    a = (np.array([10, 11, 12]), np.array([0, 1, 1]))                          # 2 positions -> 4
    b = (np.array([20, 21, 22, 23, 24, 25]), np.array([0, 0, 1, 1, 1, 1]))   # 5 positions -> 8
    s = build_sample([a, b], 16, PAD, multiple=4)
    assert s["cu_seqlens"].tolist() == [0, 4, 12, 16]
    assert s["tokens"].tolist() == [10, 11, PAD, PAD, 20, 21, 22, 23, 24, PAD, PAD, PAD, PAD, PAD, PAD, PAD]
    assert s["loss_mask"].tolist() == [1, 1, 0, 0, 0, 1, 1, 1, 1] + [0] * 7
    assert s["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]
    cp_token_index(16, 1, 2, torch.from_numpy(s["cu_seqlens"]))                # CP=2 accepts the layout
    assert document_ids(torch.from_numpy(s["cu_seqlens"]), 16).tolist() == s["segment_ids"].tolist()
    with pytest.raises(ValueError, match="not a multiple of 4"):
        build_sample([a], 10, PAD, multiple=4)


CHATS = [
    [{"role": "user", "content": f"question {k} " + "word " * (3 * k)}, {"role": "assistant", "content": f"answer {k}"}]
    for k in range(12)
] + [[{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
      {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2 " * 5}]]


@pytest.mark.parametrize("pack, multiple", [(True, 1), (False, 1), (True, 4)])
def test_packed_dataset_keeps_conversations_whole_and_separate(tok, tmp_path, pack, multiple):
    convs = [encode_conversation(c, tok) for c in CHATS]
    write_dataset(tmp_path / "sft", convs)
    seq_length = 64
    ds = PackedSFTDataset(str(tmp_path / "sft"), seq_length, PAD, pack=pack, seed=3, multiple=multiple)
    seen = []
    for idx in range(len(ds)):
        s = ds[idx]
        cu = s["cu_seqlens"].tolist()
        assert cu[0] == 0 and cu[-1] == seq_length and cu == sorted(cu)
        for k, conv_index in enumerate(ds.samples[idx]):
            ids, mask = convs[conv_index]
            lo, hi = cu[k], cu[k + 1]
            assert hi - lo == -(-(len(ids) - 1) // multiple) * multiple  # whole, never split
            hi = lo + len(ids) - 1
            assert not s["loss_mask"][hi:cu[k + 1]].any()
            assert s["tokens"][lo:hi].tolist() == ids[:-1].tolist()
            assert s["labels"][lo:hi].tolist() == ids[1:].tolist()     # no label from a neighbour
            assert s["loss_mask"][lo:hi].tolist() == mask[1:].tolist()
            assert s["position_ids"][lo:hi].tolist() == list(range(hi - lo))
            assert (s["segment_ids"][lo:cu[k + 1]] == k).all()
            seen.append(conv_index)
        tail = slice(cu[len(ds.samples[idx])], seq_length)
        assert not s["loss_mask"][tail].any() and (s["tokens"][tail] == PAD).all()
    assert sorted(seen) == list(range(len(convs)))
    widths = [-(-(len(c[0]) - 1) // multiple) * multiple for c in convs]
    assert len(ds) == (len(convs) if not pack else len(pack_bins(widths, seq_length)))
    if pack:
        assert len(ds) < len(convs)
    # The trained labels are exactly the assistant answers and their <|im_end|>.
    trained = [tok.decode(ds[i]["labels"][ds[i]["loss_mask"] == 1]) for i in range(len(ds))]
    assert sorted("".join(trained).split("<|im_end|>"))[1:] == sorted(
        [f"answer {k}" for k in range(12)] + ["a", "a2 " * 5])


def test_overlong_conversations_error_truncate_or_drop(tok, tmp_path):
    convs = [encode_conversation(c, tok) for c in CHATS]
    write_dataset(tmp_path / "sft", convs)
    longest = max(len(c[0]) for c in convs)
    with pytest.raises(ValueError, match=r"--sft-seq-length 20"):
        PackedSFTDataset(str(tmp_path / "sft"), 20, PAD)
    n_long = sum(len(c[0]) > 21 for c in convs)
    dropped = PackedSFTDataset(str(tmp_path / "sft"), 20, PAD, overlong="drop")
    assert dropped.stats["overlong"] == n_long and dropped.stats["kept"] == len(convs) - n_long
    cut = PackedSFTDataset(str(tmp_path / "sft"), 20, PAD, overlong="truncate", pack=False, shuffle=False)
    assert cut.stats["kept"] == len(convs) and longest > 21
    assert all(cut[i]["cu_seqlens"][1] <= 20 for i in range(len(cut)))


def test_dataset_refuses_misaligned_or_multi_sequence_data(tok, tmp_path):
    convs = [encode_conversation(c, tok) for c in CHATS[:3]]
    write_dataset(tmp_path / "pairs", convs, sequences_per_doc=2)
    with pytest.raises(ValueError, match="several sequences"):
        PackedSFTDataset(str(tmp_path / "pairs"), 64, PAD)
    write_dataset(tmp_path / "bad", convs)
    write_dataset(tmp_path / "other", [(c[0][:-1], c[1][:-1]) for c in convs])
    for ext in ("bin", "idx"):
        (tmp_path / f"bad_loss_mask_document.{ext}").write_bytes((tmp_path / f"other_loss_mask_document.{ext}").read_bytes())
    with pytest.raises(ValueError, match="bad_loss_mask_document does not match"):
        PackedSFTDataset(str(tmp_path / "bad"), 64, PAD)
