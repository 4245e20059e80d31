"""Toy post-training datasets with small token ids (the tiny model's 512-entry vocabulary).

Written in the exact on-disk layout of `megatron-qwen preprocess --mode sft|dpo` (megatron-core's own
`IndexedDatasetBuilder`: `{prefix}_text_document` int32 + `{prefix}_loss_mask_document` uint8), with a
ChatML-like frame: [START, USER, prompt..., END, START, ASSISTANT, answer..., END]; the loss mask is 1 on
the answer and its END. The answer is a fixed function of the prompt (each token + ANSWER_SHIFT), so a
tiny model learns it; a DPO pair's rejected answer is random tokens of the same length.
"""

from __future__ import annotations

import numpy as np
import torch

START, USER, ASSISTANT, END, PAD = 1, 2, 3, 4, 0
LOW, HIGH, ANSWER_SHIFT = 10, 100, 100  # prompt tokens in [LOW, HIGH); answers in [LOW+SHIFT, HIGH+SHIFT)


def conversation(rng: np.random.Generator, prompt_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt frame, chosen answer frame, rejected answer frame) token arrays."""
    prompt = rng.integers(LOW, HIGH, prompt_len)
    head = np.concatenate([[START, USER], prompt, [END, START, ASSISTANT]])
    chosen = np.concatenate([prompt + ANSWER_SHIFT, [END]])
    rejected = np.concatenate([rng.integers(LOW + ANSWER_SHIFT, HIGH + ANSWER_SHIFT, prompt_len), [END]])
    return head, chosen, rejected


def _write(prefix: str, docs: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    for key, k, dtype in (("text", 0, np.int32), ("loss_mask", 1, np.uint8)):
        builder = IndexedDatasetBuilder(f"{prefix}_{key}_document.bin", dtype=dtype)
        for doc in docs:
            arrays = [np.asarray(seq[k], dtype=dtype) for seq in doc]
            builder.add_document(torch.from_numpy(np.concatenate(arrays)), [len(a) for a in arrays])
        builder.finalize(f"{prefix}_{key}_document.idx")


def _with_mask(head: np.ndarray, answer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([head, answer]), np.concatenate([np.zeros(len(head)), np.ones(len(answer))])


def write_sft(prefix: str, n: int, seed: int = 0, min_len: int = 2, max_len: int = 8) -> str:
    """n conversations, one document each; returns the prefix."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        head, chosen, _ = conversation(rng, int(rng.integers(min_len, max_len + 1)))
        docs.append([_with_mask(head, chosen)])
    _write(prefix, docs)
    return prefix


def write_dpo(prefix: str, n: int, seed: int = 0, min_len: int = 2, max_len: int = 6) -> str:
    """n pairs, one document of two sequences (prompt+chosen, prompt+rejected) each; returns the prefix."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        head, chosen, rejected = conversation(rng, int(rng.integers(min_len, max_len + 1)))
        docs.append([_with_mask(head, chosen), _with_mask(head, rejected)])
    _write(prefix, docs)
    return prefix
