"""One optimizer step with megatron-core's machinery: DDP buffers, schedules, distributed optimizer.

The pieces every training job shares — wrapping model chunks in megatron's DDP, building its optimizer,
the language-model forward step and loss function, and `train_step()` — live here so the trainer, every
objective and the parallel-equivalence tests run exactly the same code. The loss is a per-token mean over the
whole global batch: the loss function returns (sum, token count) and megatron divides the gradients by
the token count summed over micro-batches and data(+context)-parallel ranks, so any layout computes
the same step as one process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from megatron_qwen.config import OptimConfig, ParallelConfig
from megatron_qwen.model.batch import forward
from megatron_qwen.model.perf import Switches
from megatron_qwen.platform.collectives import any_rank, is_last_stage, reduce_to_all
from megatron_qwen.training.profiling import phase

LOSS = "loss"  # the report key every objective's loss function fills: [loss sum, count]


def ddp_config(parallel: ParallelConfig, switches: Switches, num_chunks: int) -> DistributedDataParallelConfig:
    """megatron's DDP settings: fp32 gradient reduction, the overlaps `switches` grant (model/perf.py)."""
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=switches.overlap_grad_reduce,
        overlap_param_gather=switches.overlap_param_gather,
        # With virtual stages the schedule dispatches each chunk's gather in pipeline order.
        align_param_gather=switches.overlap_param_gather and num_chunks > 1,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        # Average over the global token count (calculate_per_token_loss), not over ranks.
        average_in_collective=False,
    )


def wrap_model(chunks: list[torch.nn.Module], parallel: ParallelConfig,
               switches: Switches | None = None) -> list[DistributedDataParallel]:
    """Wrap each model chunk in megatron's DDP (contiguous grad buffers, optional sharded optimizer), with the
    gradient-reduce and parameter-gather overlap `switches` grant (none by default)."""
    ddp = ddp_config(parallel, switches or Switches(), len(chunks))
    wrapped = []
    for index, chunk in enumerate(chunks):
        config = get_model_config(chunk)
        config.calculate_per_token_loss = True
        wrapped.append(
            DistributedDataParallel(
                config=config,
                ddp_config=ddp,
                module=chunk,
                # Only the first chunk's buckets may be overlapped with the backward of others.
                disable_bucketing=index > 0,
            )
        )
    config = get_model_config(wrapped[0])
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = [c.no_sync for c in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    if ddp.overlap_grad_reduce:
        config.grad_sync_func = [c.start_grad_sync for c in wrapped]
        if len(wrapped) == 1:
            config.grad_sync_func = config.grad_sync_func[0]
    if ddp.align_param_gather:
        config.param_sync_func = [c.start_param_sync for c in wrapped]
    return wrapped


@contextlib.contextmanager
def params_in_sync(chunks: list[DistributedDataParallel]) -> Iterator[None]:
    """With overlapped parameter gathers, each module receives its updated weights only at its next forward;
    inside this block every weight is in place (for checkpoints and evaluation)."""
    hooked = [c for c in chunks if c.ddp_config.overlap_param_gather]
    for chunk in hooked:
        chunk.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        for chunk in hooked:
            chunk.enable_forward_pre_hook()


def optimizer_config(optim: OptimConfig, parallel: ParallelConfig, model_config) -> OptimizerConfig:
    """AdamW with decoupled weight decay, fp32 master weights for bf16 models, optionally sharded over DP."""
    return OptimizerConfig(
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


def build_optimizer(chunks: list[torch.nn.Module], optim: OptimConfig, parallel: ParallelConfig):
    """megatron-core's optimizer over the DDP-wrapped chunks."""
    return get_megatron_optimizer(optimizer_config(optim, parallel, get_model_config(chunks[0])), chunks)


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Masked per-token loss: (sum, token count, report) for megatron's per-token averaging.

    The report maps each metric to a [sum, count] tensor; `reduce_reports` turns every key into a global mean.
    """
    losses = output_tensor.float()
    mask = loss_mask.view(-1).float()
    total = torch.sum(losses.view(-1) * mask)
    tokens = mask.sum().to(torch.int)
    report = torch.cat([total.detach().view(1), mask.sum().view(1)])
    return total, tokens, {LOSS: report}


def forward_step(data_iterator, model):
    """megatron's forward-step contract for language modelling: (per-token loss, loss function of it)."""
    batch = next(data_iterator)
    return forward(model, batch), partial(loss_func, batch["loss_mask"])


@dataclass
class StepResult:
    totals: dict[str, tuple[float, float]]  # metric -> (global sum, global count)
    grad_norm: float | None = None
    update_successful: bool = True
    skipped: bool = False  # a non-finite loss or gradient somewhere, or a rejected loss: nothing was updated
    reason: str | None = None  # why it was skipped

    @property
    def loss(self) -> float:
        """Mean loss over the global batch (per token, or per pair for DPO)."""
        return mean(self.totals[LOSS])

    @property
    def tokens(self) -> int:
        return int(self.totals[LOSS][1])

    def means(self) -> dict[str, float]:
        return {k: mean(v) for k, v in self.totals.items()}


def mean(total: tuple[float, float]) -> float:
    return total[0] / max(total[1], 1.0)


def reduce_reports(reports: list[dict], keys: tuple[str, ...] = (LOSS,)) -> dict[str, tuple[float, float]]:
    """Every key's [sum, count] summed over micro-batches, then over data(+context)-parallel ranks, and
    sent from the last pipeline stage to all (collective: every rank calls it with the same keys)."""
    totals = torch.zeros(len(keys), 2, dtype=torch.float64)
    if is_last_stage():
        for report in reports:
            for i, key in enumerate(keys):
                totals[i] += report[key].double().cpu()
    reduce_to_all(totals)
    return {key: (float(totals[i, 0]), float(totals[i, 1])) for i, key in enumerate(keys)}


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
    keys: tuple[str, ...] = (LOSS,),
    accept_loss: Callable[[float], bool] | None = None,
) -> StepResult:
    """Zero grads, forward+backward every micro-batch, reduce grads, clip, step; `keys` are the metrics
    the step function's loss reports (see `reduce_reports`).

    A non-finite loss or gradient on any rank skips the update on every rank: the optimizer is not
    stepped, so weights and optimizer state stay as they were (the caller keeps the schedule too). So does
    a loss `accept_loss` rejects (every rank holds the same reduced loss, so every rank decides alike)."""
    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    with phase("forward_backward"):
        reports = run_forward_backward(chunks, microbatches, seq_length, micro_batch_size, step_func=step_func)
    totals = reduce_reports(reports, keys)
    if any_rank(not (math.isfinite(totals[LOSS][0]) and grads_finite(chunks))):
        return StepResult(totals, None, update_successful=False, skipped=True, reason="non-finite loss or gradient")
    if accept_loss is not None and not accept_loss(mean(totals[LOSS])):
        return StepResult(totals, None, update_successful=False, skipped=True, reason="loss spike")
    with phase("optimizer"):
        update_successful, grad_norm, _ = optimizer.step()
    return StepResult(totals, grad_norm, bool(update_successful))


class LossSpikeRule:
    """Rejects a loss above the mean of the last `window` accepted losses by more than `margin` (a fraction).

    Judges nothing until it has a full window; `record` adds the loss of a step that was applied. Its state
    (`recent`) goes into the checkpoint, so a resumed run judges exactly as an uninterrupted one."""

    def __init__(self, margin: float, window: int, recent: list[float] | None = None):
        self.margin, self.window = margin, window
        self.recent: list[float] = list(recent or [])[-window:]

    def accept(self, loss: float) -> bool:
        if len(self.recent) < self.window:
            return True
        return loss <= (1.0 + self.margin) * (sum(self.recent) / len(self.recent))

    def record(self, loss: float) -> None:
        self.recent = (self.recent + [loss])[-self.window:]


def grads_finite(chunks: list[torch.nn.Module]) -> bool:
    """Every gradient this rank holds (megatron's main_grad buffers, already reduced) is finite."""
    for chunk in chunks:
        for param in chunk.parameters():
            grad = getattr(param, "main_grad", None)
            if grad is not None and not bool(torch.isfinite(grad).all()):
                return False
    return True
