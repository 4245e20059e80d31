"""Training and validation samples, addressed by a global sample index so a resumed run continues exactly.

A run reads samples `[step·G, (step+1)·G)` of the training dataset at step `step` (G = global batch
size); each data-parallel rank takes its contiguous share and cuts it into micro-batches. The only
data position a checkpoint needs is therefore the number of consumed samples, and a run resumed at
step k reads exactly the samples an uninterrupted run would have read.

Sources: megatron-core's `GPTDataset` built by `BlendedMegatronDatasetBuilder` over our
`{prefix}_text_document` indexed datasets and blends (`data.blend`), or, with `data.mock=true`, a small
*learnable* synthetic dataset (arithmetic token progressions) for tests and the demo.
`shard_for_context_parallel` is the one call site where the long-context work slices each micro-batch
for context parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from megatron_qwen.config import DataConfig


class SampleSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict: ...


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
                  vocab_size: int) -> tuple[SampleSource, SampleSource | None]:
    """(train, validation) sample sources for a run that reads `train_samples` training samples."""
    if data.mock or not data.blend:
        return (LearnableMock(vocab_size, data.seq_length, train_samples, seed),
                LearnableMock(vocab_size, data.seq_length, max(eval_samples, 1), seed + 1))
    train, valid, _ = build_gpt_datasets(data, [train_samples, eval_samples, 0], seed, vocab_size)
    return train, valid


def causal_mask(seq_length: int) -> torch.Tensor:
    """[1, 1, s, s] bool, True where attention is masked (explicit: avoids a CUDA-only default)."""
    return torch.ones(1, 1, seq_length, seq_length, dtype=torch.bool).triu(1)


def shard_for_context_parallel(batch: dict) -> dict:
    """Slice one micro-batch for this context-parallel rank (load-balanced 2·cp chunks; identity at cp=1)."""
    from megatron.core import parallel_state

    from megatron_qwen.model.context_parallel import shard_batch_for_cp

    if parallel_state.get_context_parallel_world_size() <= 1:  # 0 before parallel state exists
        return batch
    return shard_batch_for_cp(batch)


def microbatches(source: SampleSource, first_sample: int, global_batch: int, micro_batch: int,
                 dp_rank: int, dp_size: int, seq_length: int) -> list[dict]:
    """This data-parallel rank's micro-batches of global samples [first_sample, first_sample + G)."""
    share = global_batch // dp_size
    start = first_sample + dp_rank * share
    mask = causal_mask(seq_length)
    out = []
    for offset in range(0, share, micro_batch):
        samples = [source[(start + offset + j) % len(source)] for j in range(micro_batch)]
        if hasattr(source, "collate"):  # post-training sources build their own batches (packed rows, pairs)
            out.append(shard_for_context_parallel(source.collate(samples, seq_length)))
            continue
        batch = {
            key: torch.stack([torch.as_tensor(s[key]) for s in samples])
            for key in ("tokens", "labels", "loss_mask")
        }
        batch["tokens"] = batch["tokens"].long()
        batch["labels"] = batch["labels"].long()
        batch["loss_mask"] = batch["loss_mask"].float()
        batch["position_ids"] = torch.arange(seq_length).expand(micro_batch, seq_length).contiguous()
        batch["attention_mask"] = mask
        out.append(shard_for_context_parallel(batch))
    return out
