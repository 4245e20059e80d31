"""Context-parallel layout and packed-sequence parameters: one definition shared by data and attention.

megatron-core's load-balanced layout splits a sequence into 2·cp chunks and gives CP rank r the chunks
r and 2·cp−1−r, so every rank gets an equal share of the causal attention work. Packed sequences
(several documents in one row, delimited by `cu_seqlens`) are split the same way *per document*, as
Transformer Engine's THD format and megatron's `_apply_rotary_pos_emb_thd` expect; each document's
length must then be a multiple of 2·cp (the packer pads documents, and the padding is loss-masked).

`cp_token_index()` is the layout; `shard_batch_for_cp()` slices one micro-batch with it (the training
loop calls it once per micro-batch); `LocalCoreAttention` uses the same index to place the all-gathered
keys and values; `packed_seq_params()` builds megatron's `PackedSeqParams` (THD) from `cu_seqlens`.
RoPE needs no positions from the batch: megatron derives them from the layout (bshd) or from
`cu_seqlens` (THD), restarting at 0 for every document.
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams

# Micro-batch entries laid out [batch, sequence] that are sliced along the sequence.
SEQUENCE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def cp_token_index(total: int, cp_rank: int, cp_size: int, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Positions (in the full sequence of length `total`) that CP rank `cp_rank` holds, in its order.

    Without `cu_seqlens` the whole row is one document. With it (int, [docs+1], cu_seqlens[-1] == total)
    each document is split into 2·cp chunks and the rank takes chunks r and 2·cp−1−r of every document.
    """
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, total])
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if bounds[0] != 0 or bounds[-1] != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at the sequence length {total}; got {bounds}")
    if cp_size == 1:
        return torch.arange(total)
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        if length % (2 * cp_size):
            raise ValueError(
                f"document [{start}, {end}) has length {length}, not a multiple of 2 x context_parallel_size "
                f"({2 * cp_size}); pad documents to a multiple of {2 * cp_size} when packing"
            )
        chunk = length // (2 * cp_size)
        front = start + cp_rank * chunk
        back = start + (2 * cp_size - 1 - cp_rank) * chunk
        parts += [torch.arange(front, front + chunk), torch.arange(back, back + chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def document_ids(cu_seqlens: torch.Tensor | None, total: int) -> torch.Tensor:
    """Document index of every position of the full sequence (all zeros without cu_seqlens)."""
    if cu_seqlens is None:
        return torch.zeros(total, dtype=torch.long)
    return torch.bucketize(torch.arange(total), cu_seqlens[1:].to(torch.long).cpu(), right=True)


def packed_seq_params(cu_seqlens: torch.Tensor, cp_size: int = 1) -> PackedSeqParams:
    """megatron's THD parameters for one packed row; `cu_seqlens` covers the whole row (global, not per rank).

    max_seqlen is the longest document, which is also the length of the RoPE table megatron builds, so
    positions restart at 0 in every document.
    """
    cu = cu_seqlens.to(torch.int32).flatten()
    lengths = cu[1:] - cu[:-1]
    if (lengths <= 0).any():
        raise ValueError(f"cu_seqlens must be strictly increasing; got {cu.tolist()}")
    if cp_size > 1 and (lengths % (2 * cp_size)).any():
        raise ValueError(
            f"with context_parallel_size {cp_size} every document length must be a multiple of {2 * cp_size}; "
            f"got {lengths.tolist()}"
        )
    longest = int(lengths.max())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        cu_seqlens_q_padded=cu,
        cu_seqlens_kv_padded=cu,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )


def shard_batch_for_cp(batch: dict, cp_rank: int | None = None, cp_size: int | None = None) -> dict:
    """This CP rank's share of one micro-batch (a new dict; the input is not modified).

    batch: tokens, labels, loss_mask, position_ids as [b, s]; optional attention_mask [b|1, 1, s, s]
    (True = masked; its query rows are sliced, its key columns stay whole because attention gathers all
    keys); optional `cu_seqlens` (packed row, b must be 1), from which `packed_seq_params` is built and
    the attention mask is dropped. cp_rank/cp_size default to megatron's parallel state.
    """
    if cp_size is None or cp_rank is None:
        from megatron.core import parallel_state

        cp_size = parallel_state.get_context_parallel_world_size()
        cp_rank = parallel_state.get_context_parallel_rank()
    out = dict(batch)
    cu = batch.get("cu_seqlens")
    if cu is not None:
        if batch["tokens"].shape[0] != 1:
            raise ValueError(f"a packed micro-batch holds one row (THD format); got {batch['tokens'].shape[0]}")
        out["packed_seq_params"] = packed_seq_params(cu, cp_size)
        out["attention_mask"] = None
    if cp_size == 1:
        return out
    total = batch["tokens"].shape[1]
    index = cp_token_index(total, cp_rank, cp_size, cu)
    for key in SEQUENCE_KEYS:
        if batch.get(key) is not None:
            out[key] = batch[key][:, index].contiguous()
    if out.get("attention_mask") is not None:
        out["attention_mask"] = out["attention_mask"][..., index, :].contiguous()
    return out


def pack_documents(documents: list[torch.Tensor], multiple: int = 1, pad_id: int = 0) -> dict:
    """One packed row from token documents (each n+1 long: inputs plus the final label).

    Each document contributes n inputs and n labels, padded to a multiple of `multiple` (2·cp) with
    loss-masked `pad_id`; positions restart at 0 per document. Returns tokens, labels, loss_mask,
    position_ids ([1, T]) and cu_seqlens ([docs+1], int32).
    """
    tokens, labels, mask, positions, bounds = [], [], [], [], [0]
    for doc in documents:
        n = doc.numel() - 1
        padded = -(-n // multiple) * multiple
        pad = torch.full((padded - n,), pad_id, dtype=doc.dtype)
        tokens.append(torch.cat([doc[:-1], pad]))
        labels.append(torch.cat([doc[1:], pad]))
        mask.append(torch.cat([torch.ones(n), torch.zeros(padded - n)]))
        positions.append(torch.arange(padded))
        bounds.append(bounds[-1] + padded)
    return dict(
        tokens=torch.cat(tokens)[None].long(),
        labels=torch.cat(labels)[None].long(),
        loss_mask=torch.cat(mask)[None],
        position_ids=torch.cat(positions)[None],
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
    )
