"""Packing whole documents into fixed-length rows, and joining rows into micro-batches.

Per document of n tokens `t` with loss mask `m`, a row holds n-1 positions:
    tokens = t[:-1], labels = t[1:], loss_mask = m[1:], position_ids = 0..n-2
so a label never comes from the next document. With `multiple` = k (context parallelism needs every
document length to be a multiple of 2·cp: `model/context_parallel.py`), each document's segment is
padded to a multiple of k with loss-masked `pad_id` (positions continue). A row of `seq_length` positions:
    tokens/labels/loss_mask/position_ids: [seq_length]   (the tail is padding: pad_id, loss 0)
    cu_seqlens: [0, l1, l1+l2, ..., used, seq_length]     (int32; the tail padding, if any, is the last segment)
    segment_ids: the segment of every position (0, 1, ...; the tail padding has the last id)
`collate_packed` joins rows into one THD row ([1, B*seq_length], `cu_seqlens` over the row), the
form `model/context_parallel.shard_batch_for_cp` takes; `stack_samples` stacks rows as [B, S] (no
cu_seqlens), for padded one-sequence rows under an ordinary causal mask. `pack_bins` is best-fit
decreasing over the segment lengths (deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class _FreeSpace:
    """Bins by remaining capacity: put/take a bin, and find the smallest capacity >= n in O(log C)."""

    def __init__(self, capacity: int):
        self.size = 1 << max(1, int(capacity)).bit_length()
        self.count = [0] * (2 * self.size)  # segment tree of bin counts over capacities 0..size-1
        self.bins: dict[int, list[int]] = {}

    def _add(self, c: int, delta: int) -> None:
        i = c + self.size
        while i:
            self.count[i] += delta
            i //= 2

    def put(self, c: int, b: int) -> None:
        self.bins.setdefault(c, []).append(b)
        self._add(c, 1)

    def take_at_least(self, n: int) -> tuple[int, int] | None:
        """Remove and return (capacity, bin) with the smallest capacity >= n (the latest such bin), or None."""
        c = self._first_at_least(n)
        if c is None:
            return None
        b = self.bins[c].pop()
        self._add(c, -1)
        return c, b

    def _first_at_least(self, n: int) -> int | None:
        count, i = self.count, n + self.size
        if n >= self.size:
            return None
        if count[i]:
            return n
        while i > 1:  # climb until a right sibling (indices just above ours) holds a bin
            if i % 2 == 0 and count[i + 1]:
                i += 1
                break
            i //= 2
        else:
            return None
        while i < self.size:  # then descend to its leftmost non-empty leaf
            i = 2 * i if count[2 * i] else 2 * i + 1
        return i - self.size


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group items (their sizes in `lengths`, each 1..capacity) into bins of total size <= capacity.

    Best-fit decreasing: largest items first, each into the fullest bin it fits. Items inside a bin are
    listed in index order. Deterministic.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
        bad = int(np.flatnonzero((lengths < 1) | (lengths > capacity))[0])
        raise ValueError(f"item {bad} has size {int(lengths[bad])}, outside 1..{capacity}")
    free = _FreeSpace(capacity)
    bins: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        found = free.take_at_least(n)
        if found is None:
            c, b = capacity, len(bins)
            bins.append([])
        else:
            c, b = found
        bins[b].append(i)
        if c - n > 0:
            free.put(c - n, b)
    return [sorted(b) for b in bins]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_sample(docs: Sequence[tuple[np.ndarray, np.ndarray]], seq_length: int, pad_id: int,
                 multiple: int = 1) -> dict[str, np.ndarray]:
    """Conversations (token ids, loss mask) -> one packed sample of `seq_length` positions (see module doc)."""
    if seq_length % multiple:
        raise ValueError(f"seq_length {seq_length} is not a multiple of {multiple}")
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, pad_id, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.zeros(seq_length, dtype=np.int64)
    segment_ids = np.zeros(seq_length, dtype=np.int32)
    cu = [0]
    for k, (ids, mask) in enumerate(docs):
        if len(ids) != len(mask):
            raise ValueError(f"conversation {k}: {len(ids)} tokens but {len(mask)} loss-mask values")
        n = len(ids) - 1
        start, width = cu[-1], _round_up(max(n, 1), multiple)
        if n < 1 or start + width > seq_length:
            raise ValueError(f"conversation {k} ({len(ids)} tokens) does not fit: {start} of {seq_length} used")
        tokens[start:start + n] = ids[:-1]
        labels[start:start + n] = ids[1:]
        loss_mask[start:start + n] = mask[1:]
        position_ids[start:start + width] = np.arange(width)
        segment_ids[start:start + width] = k
        cu.append(start + width)
    if cu[-1] < seq_length:
        position_ids[cu[-1]:] = np.arange(seq_length - cu[-1])
        segment_ids[cu[-1]:] = len(docs)
        cu.append(seq_length)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
            "segment_ids": segment_ids, "cu_seqlens": np.asarray(cu, dtype=np.int32)}


ROW_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")


def stack_samples(samples: Sequence[dict]) -> dict:
    """Rows as [B, S] tensors (tokens and labels int64, loss_mask float32); no cu_seqlens."""
    import torch

    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in ROW_KEYS}


def collate_packed(samples: Sequence[dict]) -> dict:
    """Samples joined into one THD row: [1, B*S] tensors, `cu_seqlens` over the row (sample b offset by b*S)."""
    import torch

    out = {k: torch.from_numpy(np.concatenate([s[k] for s in samples]))[None] for k in ROW_KEYS}
    seq_length = samples[0]["tokens"].shape[0]
    bounds = [np.asarray(s["cu_seqlens"][:-1]) + b * seq_length for b, s in enumerate(samples)]
    cu_seqlens = np.concatenate(bounds + [np.asarray([len(samples) * seq_length])]).astype(np.int32)
    out["cu_seqlens"] = torch.from_numpy(cu_seqlens)
    out["max_seqlen"] = int(np.diff(cu_seqlens).max())
    return out
