"""One optimizer step with megatron-core's machinery: DDP buffers, schedules, distributed optimizer.

The pieces every training job shares — wrapping model chunks in megatron's DDP, building its optimizer,
the forward step and loss function, and `train_step()` — live here so the trainer loop, the DPO loop
and the parallel-equivalence tests run exactly the same code. The loss is a per-token mean over the
whole global batch: the loss function returns (sum, token count) and megatron divides the gradients by
the token count summed over micro-batches and data(+context)-parallel ranks, so any layout computes
the same step as one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from megatron_qwen.config import OptimConfig, ParallelConfig


def wrap_model(chunks: list[torch.nn.Module], parallel: ParallelConfig) -> list[DistributedDataParallel]:
    """Wrap each model chunk in megatron's DDP (contiguous grad buffers, optional sharded optimizer)."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        # Average over the global token count (calculate_per_token_loss), not over ranks.
        average_in_collective=False,
    )
    wrapped = []
    for index, chunk in enumerate(chunks):
        config = get_model_config(chunk)
        config.calculate_per_token_loss = True
        wrapped.append(
            DistributedDataParallel(
                config=config,
                ddp_config=ddp_config,
                module=chunk,
                # Only the first chunk's buckets may be overlapped with the backward of others.
                disable_bucketing=index > 0,
            )
        )
    config = get_model_config(wrapped[0])
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = [c.no_sync for c in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    if parallel.overlap_grad_reduce:
        config.grad_sync_func = [c.start_grad_sync for c in wrapped]
        if len(wrapped) == 1:
            config.grad_sync_func = config.grad_sync_func[0]
    return wrapped


def build_optimizer(chunks: list[torch.nn.Module], optim: OptimConfig, parallel: ParallelConfig):
    """megatron-core's optimizer (AdamW, decoupled weight decay) over the DDP-wrapped chunks."""
    model_config = get_model_config(chunks[0])
    config = OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=model_config.bf16,
        params_dtype=model_config.params_dtype,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, chunks)


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Masked per-token loss: returns (sum, token count, report) for megatron's per-token averaging."""
    losses = output_tensor.float()
    mask = loss_mask.view(-1).float()
    total = torch.sum(losses.view(-1) * mask)
    tokens = mask.sum().to(torch.int)
    report = torch.cat([total.detach().view(1), mask.sum().view(1)])
    return total, tokens, {"lm loss": report}


def forward_step(data_iterator, model):
    """megatron's forward-step contract: returns (output, loss function of that output)."""
    batch = next(data_iterator)
    output = model(
        batch["tokens"],
        batch["position_ids"],
        batch.get("attention_mask"),
        labels=batch["labels"],
        packed_seq_params=batch.get("packed_seq_params"),
    )
    return output, partial(loss_func, batch["loss_mask"])


@dataclass
class StepResult:
    loss: float  # per-token mean over the global batch
    tokens: int  # loss tokens in the global batch
    grad_norm: float | None
    update_successful: bool


def reduce_reports(reports: list[dict]) -> tuple[float, int]:
    """Sum (loss sum, tokens) over micro-batches, then over data(+context)-parallel ranks."""
    totals = torch.zeros(2, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for report in reports:
            totals += report["lm loss"].double()
    # Everyone takes part so the last stage's value reaches all ranks (the pipeline group broadcasts).
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    dist.broadcast(totals, src=last, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, tokens = totals.tolist()
    return loss_sum / max(tokens, 1.0), int(tokens)


def run_forward_backward(
    chunks: list[torch.nn.Module],
    microbatches: list[dict],
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
    step_func: Callable = forward_step,
) -> list[dict]:
    """All micro-batches of one global batch through megatron's schedule (PP/VPP aware)."""
    iterators: Iterable = [iter(microbatches) for _ in chunks]
    if len(chunks) == 1:
        iterators = iterators[0]
    return get_forward_backward_func()(
        forward_step_func=step_func,
        data_iterator=iterators,
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def train_step(
    chunks: list[DistributedDataParallel],
    optimizer,
    microbatches: list[dict],
    seq_length: int,
    micro_batch_size: int,
    step_func: Callable = forward_step,
) -> StepResult:
    """Zero grads, forward+backward every micro-batch, reduce grads, clip, step."""
    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = run_forward_backward(chunks, microbatches, seq_length, micro_batch_size, step_func=step_func)
    update_successful, grad_norm, _ = optimizer.step()
    loss, tokens = reduce_reports(reports)
    return StepResult(loss, tokens, grad_norm, bool(update_successful))
