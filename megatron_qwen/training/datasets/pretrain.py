"""Pretraining samples: megatron-core GPT datasets over our indexed files and blends, or a learnable mock.

Sources: megatron-core's `GPTDataset` built by `BlendedMegatronDatasetBuilder` over our
`{prefix}_text_document` indexed datasets and blends (`data.blend`), or, with `data.mock=true`, a small
*learnable* synthetic dataset (arithmetic token progressions) for tests and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_qwen.config import DataConfig


class LearnableMock:
    """Sample i: tokens (start + stride·t) mod m over the first m = min(vocab, 64) ids.

    Quick to learn in two ways: the unigram (ln vocab → ln m), then the progression itself.
    """

    def __init__(self, vocab_size: int, seq_length: int, size: int, seed: int = 0):
        self.vocab, self.seq, self.size, self.seed = min(vocab_size, 64), seq_length, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        start = int(torch.randint(0, self.vocab, (1,), generator=g))
        stride = int(torch.randint(1, 4, (1,), generator=g))
        seq = (start + stride * torch.arange(self.seq + 1)) % self.vocab
        return {"tokens": seq[:-1], "labels": seq[1:], "loss_mask": torch.ones(self.seq)}


@dataclass
class _DatasetTokenizer:
    """What GPTDataset reads from a tokenizer: the document separator, padding id and vocabulary size."""

    eod: int
    vocab_size: int
    pad: int = -1

    @property
    def unique_identifiers(self) -> dict:  # part of the dataset cache key
        return {"class": "megatron_qwen", "eod": self.eod, "vocab_size": self.vocab_size}


def build_gpt_datasets(data: DataConfig, sizes: list[int], seed: int, vocab_size: int) -> list:
    """[train, valid, test] GPTDatasets (None for an empty split) over the blend in `data.blend`."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=data.seq_length,
        blend=get_blend_from_list([str(x) for x in data.blend]),
        split=data.split,
        path_to_cache=data.cache_dir,
        tokenizer=_DatasetTokenizer(eod=data.eod_token_id, vocab_size=vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


def build_sources(data: DataConfig, train_samples: int, eval_samples: int, seed: int,
                  vocab_size: int) -> tuple:
    """(train, validation) sample sources for a run that reads `train_samples` training samples."""
    if data.mock or not data.blend:
        return (LearnableMock(vocab_size, data.seq_length, train_samples, seed),
                LearnableMock(vocab_size, data.seq_length, max(eval_samples, 1), seed + 1))
    train, valid, _ = build_gpt_datasets(data, [train_samples, eval_samples, 0], seed, vocab_size)
    return train, valid
