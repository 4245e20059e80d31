"""The training steps' micro-batches, built ahead of the step by `data.num_workers` worker processes.

Micro-batch k of the run is micro-batch k % n of step k // n (n per step); `sampling.microbatch` addresses
it by global sample index, so a worker builds exactly what the training thread would have built, and the
DataLoader hands items back in index order: the same samples in the same order with any number of
workers, and a resumed run starts at micro-batch start_step · n. With 0 workers the training thread calls
`sampling.microbatches` as it always did.

Workers are forked (they share the sources; they never touch CUDA or process groups), build the samples
and collate them; the main process slices for context parallelism and moves to the device. The causal
mask of padded rows ([1, 1, S, S] bool, 64 MiB at 8K) is the same for every batch: workers drop it and the
main process puts back one cached copy instead of shipping it through shared memory. On a GPU batches
come back in pinned memory so the host-to-device copy is asynchronous.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader, Dataset

from megatron_qwen.config import Config
from megatron_qwen.model.batch import Batch, causal_mask, to_device
from megatron_qwen.platform import on_gpu
from megatron_qwen.training.datasets.sampling import (
    SampleSource,
    microbatch,
    microbatches,
    shard_for_context_parallel,
)

_CAUSAL = "_causal_mask_length"  # a worker's stand-in for the causal mask it dropped


class MicrobatchDataset(Dataset):
    """Item k: micro-batch k % n of step k // n, as `sampling.microbatch` builds it (causal mask dropped)."""

    def __init__(self, source: SampleSource, cfg: Config, dp_rank: int, dp_size: int, steps: int):
        t = cfg.train
        self.source, self.dp_rank, self.dp_size, self.seq_length = source, dp_rank, dp_size, cfg.data.seq_length
        self.global_batch, self.micro_batch = t.global_batch_size, t.micro_batch_size
        self.per_step = t.global_batch_size // dp_size // t.micro_batch_size
        self.steps = steps

    def __len__(self) -> int:
        return self.steps * self.per_step

    def __getitem__(self, k: int) -> Batch:
        step, index = divmod(k, self.per_step)
        batch = microbatch(self.source, step * self.global_batch, self.global_batch, self.micro_batch,
                           self.dp_rank, self.dp_size, self.seq_length, index)
        mask = batch.get("attention_mask")
        if mask is not None:
            del batch["attention_mask"]
            batch[_CAUSAL] = mask.shape[-1]
        return batch


def _as_is(batch: Batch) -> Batch:
    return batch


@functools.lru_cache(maxsize=2)
def _cached_causal_mask(length: int) -> torch.Tensor:
    return causal_mask(length)


def _restore(batch: Batch) -> Batch:
    if _CAUSAL in batch:
        batch["attention_mask"] = _cached_causal_mask(batch.pop(_CAUSAL))
    return batch


class StepBatches:
    """This rank's micro-batches for steps start_step, start_step + 1, ... (`next(step)` returns one step's)."""

    def __init__(self, source: SampleSource, cfg: Config, dp_rank: int, dp_size: int, start_step: int):
        t, d = cfg.train, cfg.data
        self.cfg, self.source, self.dp_rank, self.dp_size = cfg, source, dp_rank, dp_size
        self.dataset = MicrobatchDataset(source, cfg, dp_rank, dp_size, t.train_iters)
        self.next_step, self._items = start_step, None
        if d.num_workers > 0:
            per_step = self.dataset.per_step
            loader = DataLoader(self.dataset, batch_size=None, sampler=range(start_step * per_step, len(self.dataset)),
                                num_workers=d.num_workers, prefetch_factor=d.prefetch_factor,
                                pin_memory=on_gpu(), collate_fn=_as_is)
            self._items = iter(loader)

    def next(self, step: int) -> list[Batch]:
        """The micro-batches of `step` (steps must be asked for in order), on the device."""
        if step != self.next_step:
            raise RuntimeError(f"micro-batches of step {self.next_step} expected next, not of step {step}")
        self.next_step += 1
        t = self.cfg.train
        if self._items is None:
            batches = microbatches(self.source, step * t.global_batch_size, t.global_batch_size, t.micro_batch_size,
                                   self.dp_rank, self.dp_size, self.cfg.data.seq_length)
        else:
            batches = [shard_for_context_parallel(_restore(next(self._items))) for _ in range(self.dataset.per_step)]
        return [to_device(b) for b in batches]

    def close(self) -> None:
        """Stop the workers (a run that stops early)."""
        self._items = None
