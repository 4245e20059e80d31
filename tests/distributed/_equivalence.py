"""Worker functions for the parallel-equivalence tests (spawned ranks import them by name).

A reference run on one process saves its initial weights with megatron's dist_checkpointing; each
parallel layout loads exactly those weights (resharded by dist_checkpointing, not by matching seeds),
trains the same global batch for a few steps and saves its final weights; a single process then loads
both final checkpoints into TP=1 models and compares every tensor.
"""

from __future__ import annotations

import dataclasses

import torch

from megatron_qwen.config import OptimConfig, ParallelConfig
from megatron_qwen.model.presets import get_preset

SEQ = 32
GLOBAL_BATCH = 8
MICRO_BATCH = 2


def global_batch(vocab: int) -> torch.Tensor:
    """The same [GLOBAL_BATCH, SEQ+1] token block on every rank and at every step."""
    g = torch.Generator().manual_seed(1000)
    return torch.randint(0, vocab, (GLOBAL_BATCH, SEQ + 1), generator=g)


def microbatches_for_rank(tokens: torch.Tensor, dp_rank: int, dp_size: int) -> list[dict]:
    """This data-parallel rank's contiguous share of the global batch, split into micro-batches."""
    share = tokens.shape[0] // dp_size
    mine = tokens[dp_rank * share : (dp_rank + 1) * share]
    causal = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool).triu(1)
    out = []
    for i in range(0, share, MICRO_BATCH):
        block = mine[i : i + MICRO_BATCH]
        loss_mask = torch.ones(block.shape[0], SEQ)
        loss_mask[:, :3] = 0  # a masked prefix, so averaging by token count matters
        out.append(
            dict(
                tokens=block[:, :-1].contiguous(),
                labels=block[:, 1:].contiguous(),
                loss_mask=loss_mask,
                position_ids=torch.arange(SEQ).expand(block.shape[0], SEQ).contiguous(),
                attention_mask=causal,
            )
        )
    return out


def _save(chunks, path: str) -> None:
    import os

    from megatron.core import dist_checkpointing

    os.makedirs(path, exist_ok=True)
    dist_checkpointing.save(_model_state(chunks), path)


def _load(chunks, path: str) -> None:
    """Weights saved by `_save` (at any layout: dist_checkpointing reshards) into `chunks`."""
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(_model_state(chunks), path)
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(state["model" if len(chunks) == 1 else f"model{i}"])


# Adam's eps is raised from 1e-8: the key bias's gradient is mathematically zero (softmax is invariant to a
# per-query shift), so its float32 rounding noise (~1e-10) would otherwise be turned by Adam into steps of a
# sizeable fraction of lr that differ between layouts.
EQUIVALENCE_OPTIM = OptimConfig(lr=3e-3, weight_decay=0.1, clip_grad=1.0, adam_eps=1e-4)


def _model_state(chunks) -> dict:
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def train_layout(preset: str, parallel: ParallelConfig, init_dir: str | None, save_init: str | None,
                 final_dir: str, steps: int = 3) -> list[float]:
    """Build, (load initial weights), train `steps` steps, save final weights; returns the losses."""
    from megatron.core import parallel_state

    from megatron_qwen.model.build import build_model
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.step import build_optimizer, train_step, wrap_model

    model_cfg = get_preset(preset)
    init_distributed(parallel, model_cfg, SEQ, seed=1234)
    chunks = build_model(model_cfg, parallel, SEQ)
    if save_init:
        _save(chunks, save_init)
    if init_dir:
        _load(chunks, init_dir)
    wrapped = wrap_model(chunks, parallel)
    optimizer = build_optimizer(wrapped, EQUIVALENCE_OPTIM, parallel)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    losses = []
    mbs = microbatches_for_rank(global_batch(model_cfg.vocab_size), dp_rank, dp_size)
    for _ in range(steps):
        result = train_step(wrapped, optimizer, mbs, SEQ, MICRO_BATCH)
        losses.append(result.loss)
    _save(chunks, final_dir)
    return losses


def train_layouts(cases: list[tuple]) -> list[list[float]]:
    """Several layouts of one world size in the same processes (one spawn, one import of megatron-core):
    each case is train_layout's arguments; the model-parallel state is rebuilt between cases."""
    from megatron.core import parallel_state

    results = []
    for case in cases:
        results.append(train_layout(*case))
        parallel_state.destroy_model_parallel()
    return results


def full_tensors(ckpt_dir: str, scratch: str) -> dict[str, torch.Tensor]:
    """Every tensor of a dist checkpoint, unsharded (layers stacked on a leading axis), in this process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt_dir, scratch)
    state = torch.load(scratch, weights_only=False)
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def compare_checkpoints(dir_a: str, dir_b: str, scratch_dir: str) -> dict[str, float]:
    """Max difference of each tensor, relative to that tensor's largest magnitude."""
    a = full_tensors(dir_a, f"{scratch_dir}/a.pt")
    b = full_tensors(dir_b, f"{scratch_dir}/b.pt")
    assert a.keys() == b.keys(), f"checkpoint keys differ: {sorted(a.keys() ^ b.keys())}"
    return {k: float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a}


def with_layout(**kwargs) -> ParallelConfig:
    return dataclasses.replace(ParallelConfig(), **kwargs)
