"""The two collectives every objective needs to turn per-rank partial sums into one global value.

Megatron's schedules hand loss-function outputs only to the last pipeline stage, and each data(+context)
parallel rank holds its own share of the global batch. `reduce_to_all` therefore sums a float64 tensor
over data x context parallel ranks and then broadcasts it from the last pipeline stage, so every rank of
the job ends with the same global totals (callers pass zeros on the other pipeline stages). Tensors travel on the backend's
device (CUDA for NCCL, the CPU for gloo) and come back to where they were.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def comm_device(group=None) -> torch.device:
    """Where a collective's tensors must live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _in_place(t: torch.Tensor, group, op) -> torch.Tensor:
    x = t.to(comm_device(group))
    op(x)
    if x is not t:
        t.copy_(x)
    return t


def sum_over_data_parallel(t: torch.Tensor) -> torch.Tensor:
    """In place: sum over the data-parallel group, context-parallel ranks included."""
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    return _in_place(t, group, lambda x: dist.all_reduce(x, group=group))


def broadcast_from_last_stage(t: torch.Tensor) -> torch.Tensor:
    """In place: the last pipeline stage's value on every stage of this pipeline."""
    from megatron.core import parallel_state

    group = parallel_state.get_pipeline_model_parallel_group()
    src = parallel_state.get_pipeline_model_parallel_last_rank()
    return _in_place(t, group, lambda x: dist.broadcast(x, src=src, group=group))


def any_rank(flag: bool, group=None) -> bool:
    """True on every rank when `flag` is true on any rank of `group` (default: the whole job)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=comm_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def reduce_to_all(t: torch.Tensor) -> torch.Tensor:
    """Sum over data(+context) parallel ranks, then broadcast from the last pipeline stage (collective)."""
    return broadcast_from_last_stage(sum_over_data_parallel(t))


def is_last_stage() -> bool:
    """Whether this rank holds the last pipeline stage (where loss functions run)."""
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_last_stage(ignore_virtual=True)
