"""DPO preference pairs: records -> paired ChatML sequences, and the reader of the preprocessed pairs.

Why it exists: offline DPO (stage 3, DESIGN §1) compares the log-probability of a chosen and a rejected
answer to the same prompt. Both must be rendered exactly like SFT data (same ChatML, same loss mask) so
the policy is scored on the tokens it would generate.

Input record (JSONL), conversations in the OpenAI `messages` layout:
    {"prompt": [{"role": "system", ...}, {"role": "user", ...}, ...]  or "plain user text",
     "chosen": [{"role": "assistant", "content": ...}, ...]          or "plain answer text",
     "rejected": same as chosen}
The prompt must end with a user turn; each response starts with an assistant turn. Assistant turns inside
the prompt are history: they get no loss. Pairs whose two responses are identical are skipped.

On-disk layout (`tools/preprocess_data.py --mode dpo`): `{prefix}_text_document` and
`{prefix}_loss_mask_document` with ONE DOCUMENT PER PAIR made of EXACTLY TWO SEQUENCES: sequence 0 is
prompt + chosen, sequence 1 is prompt + rejected (the prompt tokens are stored twice). The loss mask is 1
on the response tokens (answers and their `<|im_end|>`), so the masked sum of per-token log-probs is the
response log-probability DPO needs. Pair i is therefore sequences 2i and 2i+1, and `PreferenceDataset`
checks that every document has exactly two sequences (a record is written whole or not at all).

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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_qwen.data.chat import (
    ChatFormatError,
    Segment,
    fit_segments,
    normalize_messages,
    render_segments,
)
from megatron_qwen.data.packing import build_sample, collate_packed, pack_bins, stack_samples

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def _as_messages(value, field: str, default_role: str) -> list:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [value]
    return value


def pair_messages(record: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) normalized messages; ChatFormatError naming the field when malformed."""
    for name in PAIR_FIELDS:
        if name not in record:
            raise ChatFormatError(f"missing field '{name}'")
    prompt = normalize_messages(_as_messages(record["prompt"], "prompt", "user"), "prompt")
    if prompt[-1]["role"] != "user":
        raise ChatFormatError(f"prompt[{len(prompt) - 1}] has role {prompt[-1]['role']!r}; the prompt must "
                              "end with a user turn")
    prompt = [{**m, "loss": False} for m in prompt]
    responses = []
    for name in ("chosen", "rejected"):
        msgs = normalize_messages(_as_messages(record[name], name, "assistant"), name)
        if msgs[0]["role"] != "assistant":
            raise ChatFormatError(f"{name}[0] has role {msgs[0]['role']!r}; a response starts with an "
                                  "assistant turn")
        responses.append(msgs)
    return prompt, responses[0], responses[1]


def encode_pair(record: dict, tokenizer, system_prompt: str | None = None) -> tuple[list[Segment], list[Segment]]:
    """Record -> (prompt + chosen, prompt + rejected) segments; `system_prompt` as in `chat.render_segments`."""
    prompt, chosen, rejected = pair_messages(record)
    if [(m["role"], m["content"]) for m in chosen] == [(m["role"], m["content"]) for m in rejected]:
        raise ChatFormatError("chosen and rejected are identical")
    return (render_segments(prompt + chosen, tokenizer, system_prompt),
            render_segments(prompt + rejected, tokenizer, system_prompt))


def fit_pair(chosen: list[Segment], rejected: list[Segment], max_tokens: int | None, overlong: str = "truncate"
             ) -> tuple[tuple[list[Segment], list[Segment]] | None, str]:
    """Fit both sequences (see `chat.fit_segments`); the pair is dropped if either would be."""
    c, c_outcome = fit_segments(chosen, max_tokens, overlong)
    r, r_outcome = fit_segments(rejected, max_tokens, overlong)
    if c is None or r is None:
        return None, "dropped"
    severity = ("fits", "truncated_turns", "truncated_tokens")
    return (c, r), max(c_outcome, r_outcome, key=severity.index)


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
    import torch

    docs = [p[side] for p in pairs for side in ("chosen", "rejected")]
    batch = collate_packed([build_sample(docs, seq_length, pad_id)])
    b, seg = len(pairs), batch["segment_ids"].long()
    batch["sequence_ids"] = torch.where(seg < 2 * b, (seg % 2) * b + seg // 2, 2 * b)
    batch["num_pairs"] = b
    return batch
