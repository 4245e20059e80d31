"""The two collectives every objective needs to turn per-rank partial sums into one global value.

Megatron's schedules hand loss-function outputs only to the last pipeline stage, and each data(+context)
parallel rank holds its own share of the global batch. `reduce_to_all` therefore sums a float64 tensor
over data x context parallel ranks and then broadcasts it from the last pipeline stage, so every rank of
the job ends with the same global totals (callers pass zeros on the other pipeline stages).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def sum_over_data_parallel(t: torch.Tensor) -> torch.Tensor:
    """In place: sum over the data-parallel group, context-parallel ranks included."""
    from megatron.core import parallel_state

    dist.all_reduce(t, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return t


def broadcast_from_last_stage(t: torch.Tensor) -> torch.Tensor:
    """In place: the last pipeline stage's value on every stage of this pipeline."""
    from megatron.core import parallel_state

    dist.broadcast(t, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    return t


def reduce_to_all(t: torch.Tensor) -> torch.Tensor:
    """Sum over data(+context) parallel ranks, then broadcast from the last pipeline stage (collective)."""
    return broadcast_from_last_stage(sum_over_data_parallel(t))


def is_last_stage() -> bool:
    """Whether this rank holds the last pipeline stage (where loss functions run)."""
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_last_stage(ignore_virtual=True)
