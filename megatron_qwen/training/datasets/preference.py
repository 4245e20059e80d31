"""DPO pairs at run time: the reader of `--mode dpo` files and the sample-indexed view the trainer batches.

`collate_pairs` pads a batch of B pairs into [2B, S] tensors: rows 0..B-1 chosen, rows B..2B-1 rejected,
in the same per-row layout as SFT samples (`packing.build_sample`: tokens, labels, loss_mask,
position_ids, segment_ids), one sequence per row under the ordinary causal mask (padding at the end).
The response log-prob of row r is `(token_logps * loss_mask)[r].sum()` (`training.dpo_loss.sequence_logps`).

Packed (`data.packed_sequences=true`): `pack_pair_rows` groups WHOLE pairs into rows of `seq_length`
positions (`packing.pack_bins`; a pair of n_c + n_r tokens needs n_c + n_r - 2 positions), and
`collate_packed_pairs` builds one THD row [1, seq_length] per group with `packing.build_sample`: segments
chosen 0, rejected 0, chosen 1, rejected 1, ..., then the tail padding, each with its own `cu_seqlens`
entry (block-diagonal causal attention: no sequence sees another). `sequence_ids` numbers every position's
sequence in the padded block's order (chosen k -> k, rejected k -> B + k, padding -> 2B), so the loss sums
per segment instead of per row and everything after that is shared with the padded layout.

`PairRows` is what the trainer addresses by global sample index: with padded rows, index j is one
*sequence* (pair j // 2, chosen if j is even, rejected if odd), so `train.micro_batch_size` and
`train.global_batch_size` count sequences (two per pair; both even) and a micro-batch of B pairs is the
[2B, S] block of `collate_pairs`; packed (`data.packed_sequences=true`), index j is one THD row holding
several whole pairs, built once from the shuffled pair order (the same on every rank). Every pair must
fit; otherwise the source refuses the dataset, counting the pairs that do not fit. `reference` holds the
frozen reference's [pairs, 2] summed log-probs, which every batch carries as `reference_logps`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from megatron_qwen.model.batch import finalize
from megatron_qwen.training.datasets.packing import build_sample, collate_packed, pack_bins, stack_samples

log = logging.getLogger(__name__)


class PreferenceDataset:
    """Pairs from `{prefix}_text_document` + `{prefix}_loss_mask_document` (see the module doc for the layout)."""

    def __init__(self, prefix: str):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.tokens = IndexedDataset(f"{prefix}_text_document")
        self.masks = IndexedDataset(f"{prefix}_loss_mask_document")
        docs = np.asarray(self.tokens.document_indices)
        if not np.array_equal(docs, np.arange(0, 2 * (len(docs) - 1) + 1, 2)):
            bad = int(np.flatnonzero(np.diff(docs) != 2)[0])
            raise ValueError(f"{prefix}_text_document: document {bad} has {int(docs[bad + 1] - docs[bad])} "
                             "sequences; DPO data has exactly two per document (chosen, rejected)")
        if not np.array_equal(self.tokens.sequence_lengths, self.masks.sequence_lengths):
            raise ValueError(f"{prefix}_loss_mask_document does not match {prefix}_text_document")

    def __len__(self) -> int:
        return len(self.tokens.document_indices) - 1

    def lengths(self) -> np.ndarray:
        """[pairs, 2] token counts (chosen, rejected)."""
        return np.asarray(self.tokens.sequence_lengths, dtype=np.int64).reshape(-1, 2)

    def __getitem__(self, i: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not 0 <= i < len(self):
            raise IndexError(f"pair {i} out of range (0..{len(self) - 1})")
        return {"chosen": (self.tokens[2 * i], self.masks[2 * i]),
                "rejected": (self.tokens[2 * i + 1], self.masks[2 * i + 1])}


def collate_pairs(pairs: Sequence[dict], seq_length: int, pad_id: int) -> dict:
    """B pairs -> [2B, seq_length] tensors, chosen rows first; each sequence needs <= seq_length + 1 tokens."""
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    for k, (ids, _) in enumerate(rows):
        if len(ids) > seq_length + 1:
            which = "chosen" if k < len(pairs) else "rejected"
            raise ValueError(f"pair {k % len(pairs)} of the batch: {which} has {len(ids)} tokens, more than "
                             f"seq_length + 1 = {seq_length + 1}; preprocess with --sft-seq-length {seq_length}")
    batch = stack_samples([build_sample([row], seq_length, pad_id) for row in rows])
    batch["num_pairs"] = len(pairs)
    return batch


def pair_positions(lengths: np.ndarray, packed: bool) -> np.ndarray:
    """Positions each pair ([pairs, 2] token counts) needs: its longer sequence's (padded rows, one sequence
    per row) or both sequences' together (packed, both in one row)."""
    return lengths.sum(1) - 2 if packed else lengths.max(1) - 1


def pack_pair_rows(lengths: np.ndarray, order: Sequence[int], seq_length: int) -> list[list[int]]:
    """Whole pairs (ids in `order`) grouped into packed rows of <= seq_length positions, best-fit decreasing.

    Inside a row, pairs keep their order in `order`. Deterministic: every rank builds the same rows.
    """
    order = np.asarray(order, dtype=np.int64)
    groups = pack_bins(pair_positions(lengths[order], packed=True), seq_length)
    return [order[g].tolist() for g in groups]


def collate_packed_pairs(pairs: Sequence[dict], seq_length: int, pad_id: int) -> dict:
    """B pairs -> one THD row [1, seq_length] with `cu_seqlens` and `sequence_ids` (see the module doc)."""
    docs = [p[side] for p in pairs for side in ("chosen", "rejected")]
    batch = collate_packed([build_sample(docs, seq_length, pad_id)])
    b, seg = len(pairs), batch["segment_ids"].long()
    batch["sequence_ids"] = torch.where(seg < 2 * b, (seg % 2) * b + seg // 2, 2 * b)
    batch["num_pairs"] = b
    return batch


class PairRows:
    """Sample-indexed view of a PreferenceDataset (see the module doc): sequences of [2B, S] blocks, or packed rows."""

    def __init__(self, pairs: PreferenceDataset, seq_length: int, pad_id: int, shuffle: bool, seed: int,
                 packed: bool = False):
        self.pairs, self.seq_length, self.pad_id, self.packed = pairs, seq_length, pad_id, packed
        n = len(pairs)
        if n == 0:
            raise ValueError("the DPO dataset has no pairs")
        lengths = pairs.lengths()
        self._check_fit(lengths)
        rng = np.random.default_rng(seed)
        self.order = rng.permutation(n) if shuffle else np.arange(n)
        self.rows: list[list[int]] = []  # packed: the pair ids of every row
        if packed:
            self.rows = pack_pair_rows(lengths, self.order, seq_length)
            if shuffle:  # best-fit decreasing emits the longest pairs first
                self.rows = [self.rows[i] for i in rng.permutation(len(self.rows))]
            log.info("DPO: %d pairs packed into %d rows of %d positions (%.1f%% padding)", n, len(self.rows),
                     seq_length, 100 * (1 - pair_positions(lengths, True).sum() / (len(self.rows) * seq_length)))
        self.reference: torch.Tensor | None = None  # [pairs, 2] (chosen, rejected) summed log-probs

    def _check_fit(self, lengths: np.ndarray) -> None:
        need = pair_positions(lengths, self.packed)
        bad = np.flatnonzero(need > self.seq_length)
        if bad.size:
            i = int(bad[0])
            rule = (f"both sequences together need <= data.seq_length + 2 = {self.seq_length + 2} tokens (one packed "
                    f"row); preprocess with --sft-seq-length {self.seq_length // 2} or raise data.seq_length"
                    if self.packed else f"each sequence needs <= data.seq_length + 1 = {self.seq_length + 1} tokens; "
                    f"preprocess with --sft-seq-length {self.seq_length}")
            raise ValueError(f"{bad.size} of {len(lengths)} DPO pairs do not fit (the first: pair {i}, chosen "
                             f"{lengths[i, 0]} + rejected {lengths[i, 1]} tokens): {rule}")

    def __len__(self) -> int:
        return len(self.rows) if self.packed else 2 * len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        if self.packed:
            return {"pairs": self.rows[index]}
        return {"pair": int(self.order[index // 2]), "side": index % 2}

    def collate(self, samples: list[dict], seq_length: int) -> dict:
        if self.packed:
            if len(samples) != 1:
                raise ValueError("packed DPO rows need train.micro_batch_size=1 (a row already holds several pairs)")
            return self.batch_of_pairs(samples[0]["pairs"])
        ids = [s["pair"] for s in samples[0::2]]
        if len(samples) % 2 or any(s["side"] != k % 2 or s["pair"] != ids[k // 2] for k, s in enumerate(samples)):
            raise ValueError("a DPO micro-batch must hold whole pairs (chosen, rejected); train.micro_batch_size "
                             "and the data-parallel share of train.global_batch_size count sequences and must be even")
        return self.batch_of_pairs(ids)

    def batch_of_pairs(self, ids: list[int]) -> dict:
        """One micro-batch of these pairs: a [2B, S] block, or (packed) one THD row holding all of them."""
        pairs, s = [self.pairs[i] for i in ids], self.seq_length
        batch = (collate_packed_pairs(pairs, s, self.pad_id) if self.packed
                 else collate_pairs(pairs, s, self.pad_id))
        batch = finalize(batch, None if self.packed else s)
        batch["pair_ids"] = torch.tensor(ids, dtype=torch.long)
        ref = self.reference[ids] if self.reference is not None else torch.zeros(len(ids), 2, dtype=torch.float64)
        batch["reference_logps"] = torch.cat([ref[:, 0], ref[:, 1]]).float()  # sequence order: chosen, then rejected
        return batch

    def reference_groups(self, micro_batch_size: int, dp_rank: int, dp: int) -> list[list[int]]:
        """This data-parallel rank's share of the pairs for the reference pass: pair ids per micro-batch."""
        if self.packed:
            return self.rows[dp_rank::dp]
        per_mb = micro_batch_size // 2
        mine = list(range(dp_rank, len(self.pairs), dp))
        if mine and len(mine) % per_mb:
            mine += [mine[-1]] * (per_mb - len(mine) % per_mb)  # full micro-batches (fixed pipeline shapes)
        return [mine[i:i + per_mb] for i in range(0, len(mine), per_mb)]
