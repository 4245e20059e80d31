"""Samples by global index -> this rank's micro-batches, so a resumed run continues exactly.

A run reads samples `[step·G, (step+1)·G)` of a source at step `step` (G = global batch size); each
data-parallel rank takes its contiguous share and cuts it into micro-batches. The only data position a
checkpoint needs is therefore the number of consumed samples, and a run resumed at step k reads exactly
the samples an uninterrupted run would have read. Sources that build their own batches (packed rows,
DPO pairs) have a `collate(samples, seq_length)` method; plain [seq_length] samples are stacked. Every
micro-batch is then sliced for this context-parallel rank (identity at CP=1).
"""

from __future__ import annotations

from typing import Protocol

import torch

from megatron_qwen.model.batch import Batch, finalize


class SampleSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict: ...


def stack(samples: list[dict], seq_length: int) -> Batch:
    """[seq_length] samples (tokens, labels, loss_mask) -> a padded [B, S] batch under the causal mask."""
    batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in ("tokens", "labels", "loss_mask")}
    batch["position_ids"] = torch.arange(seq_length).expand(len(samples), seq_length).contiguous()
    return finalize(batch, seq_length)


def shard_for_context_parallel(batch: Batch) -> Batch:
    """Slice one micro-batch for this context-parallel rank (load-balanced 2·cp chunks; identity at cp=1)."""
    from megatron.core import parallel_state

    from megatron_qwen.model.context_parallel import shard_batch_for_cp

    if parallel_state.get_context_parallel_world_size() <= 1:  # 0 before parallel state exists
        return batch
    return shard_batch_for_cp(batch)


def microbatch(source: SampleSource, first_sample: int, global_batch: int, micro_batch: int,
               dp_rank: int, dp_size: int, seq_length: int, index: int) -> Batch:
    """Micro-batch `index` of this data-parallel rank's share of global samples [first_sample, first_sample + G),
    before the context-parallel slice."""
    start = first_sample + dp_rank * (global_batch // dp_size) + index * micro_batch
    samples = [source[(start + j) % len(source)] for j in range(micro_batch)]
    return getattr(source, "collate", stack)(samples, seq_length)


def microbatches(source: SampleSource, first_sample: int, global_batch: int, micro_batch: int,
                 dp_rank: int, dp_size: int, seq_length: int) -> list[Batch]:
    """This data-parallel rank's micro-batches of global samples [first_sample, first_sample + G)."""
    count = global_batch // dp_size // micro_batch
    return [shard_for_context_parallel(microbatch(source, first_sample, global_batch, micro_batch, dp_rank, dp_size,
                                                  seq_length, index)) for index in range(count)]
