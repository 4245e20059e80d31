"""Worker functions for the LoRA tests (spawned ranks import them by name), built on `_equivalence`'s batch,
optimizer and checkpoint helpers.

The reference process builds the tiny model, attaches adapters, sets every B to seeded random values (B = 0
would leave A without a gradient in the first step and hide a wrong A split) and saves the whole model; each
layout loads exactly those weights (resharded by dist_checkpointing), trains the same global batch and saves
its final weights, which a single process then compares with the reference's.
"""

from __future__ import annotations

import torch

from megatron_qwen.config import LoRAConfig, ParallelConfig
from megatron_qwen.model.presets import get_preset
from tests.distributed import _equivalence as eq

LORA = LoRAConfig(enabled=True, rank=4, alpha=8.0)


def randomize_b(chunks, seed: int = 5) -> None:
    """Seeded random B in every adapter (single process: whole tensors)."""
    from megatron_qwen.model.lora import adapters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, adapter in adapters(chunks):
            adapter.B.copy_(0.05 * torch.randn(adapter.B.shape, generator=g))


def build(preset: str, parallel: ParallelConfig, lora: LoRAConfig = LORA, seq: int = eq.SEQ):
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.lora import apply_lora
    from megatron_qwen.platform import init_distributed

    model_cfg = get_preset(preset)
    init_distributed(parallel, model_cfg, seq, seed=1234)
    chunks = build_model(model_cfg, parallel, seq)
    apply_lora(chunks, lora, seed=1234)
    return model_cfg, chunks


def train_lora_layout(preset: str, parallel: ParallelConfig, init_dir: str | None, save_init: str | None,
                      final_dir: str, steps: int = 3) -> dict:
    """Like eq.train_layout with adapters; returns losses and (on the reference) the facts the unit checks use."""
    from megatron.core import parallel_state

    from megatron_qwen.model.lora import trainable_parameter_count
    from megatron_qwen.training.step import build_optimizer, train_step, wrap_model

    model_cfg, chunks = build(preset, parallel)
    if save_init:
        randomize_b(chunks)
        eq._save(chunks, save_init)
    if init_dir:
        eq._load(chunks, init_dir)
    base_before = {n: p.detach().clone() for c in chunks for n, p in c.named_parameters() if not p.requires_grad}
    wrapped = wrap_model(chunks, parallel)
    optimizer = build_optimizer(wrapped, eq.EQUIVALENCE_OPTIM, parallel)
    mbs = eq.microbatches_for_rank(eq.global_batch(model_cfg.vocab_size), parallel_state.get_data_parallel_rank(),
                                   parallel_state.get_data_parallel_world_size())
    losses = [train_step(wrapped, optimizer, mbs, eq.SEQ, eq.MICRO_BATCH).loss for _ in range(steps)]
    eq._save(chunks, final_dir)
    named = {n: p for c in chunks for n, p in c.named_parameters()}
    in_optimizer = {id(p) for opt in getattr(optimizer, "chained_optimizers", [optimizer])
                    for group in opt.optimizer.param_groups for p in group["params"]}
    return {
        "losses": losses,
        "base_unchanged": all(torch.equal(named[n], t) for n, t in base_before.items()),
        "base_count": len(base_before),
        "trainable": sorted(n for n, p in named.items() if p.requires_grad),
        "trainable_numel": sum(p.numel() for p in named.values() if p.requires_grad),
        "formula": trainable_parameter_count(model_cfg, LORA),
        # megatron's grad buffers and optimizer: only the adapters (float32 main params may be copies, so count)
        "grad_buffer_numel": sum(p.numel() for w in wrapped for b in w.buffers for p in b.params),
        "optimizer_numel": sum(t.numel() for opt in getattr(optimizer, "chained_optimizers", [optimizer])
                               for group in opt.optimizer.param_groups for t in group["params"]),
        "frozen_in_optimizer": any(id(p) in in_optimizer for n, p in named.items() if not p.requires_grad),
    }


def train_lora_layouts(cases: list[tuple]) -> list[dict]:
    """Several layouts of one world size in one spawn (see eq.train_layouts)."""
    from megatron.core import parallel_state

    results = []
    for case in cases:
        results.append(train_lora_layout(*case))
        parallel_state.destroy_model_parallel()
    return results
