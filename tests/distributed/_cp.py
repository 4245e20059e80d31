"""Worker functions for the context-parallel equivalence tests (spawned ranks import them by name).

Same pattern as `_equivalence.py`: a CP=1 run saves its initial weights with dist_checkpointing, each
layout loads them, trains 3 steps on the same global batch — sliced for its CP rank by
`shard_batch_for_cp` — and saves its final weights for an unsharded comparison. Three data cases:
"plain" (a causal row; in micro-batch 0 every token CP rank 1 would hold is loss-masked, so that rank
contributes 0 of 0 tokens), "yarn" (the plain data with YaRN, original context 16 < sequence 32), and
"packed" (one THD row of three documents of uneven length, padded to multiples of 4).
"""

from __future__ import annotations

import dataclasses

import torch

from megatron_qwen.config import ParallelConfig, YarnConfig
from megatron_qwen.model.context_parallel import cp_token_index, pack_documents, shard_batch_for_cp
from megatron_qwen.model.presets import get_preset
from tests.distributed import _equivalence as eq

SEQ = 32
PACKED_SEQ = 64
DOC_TOKENS = (11, 18, 30)  # inputs per document; padded to 12, 20, 32 (multiples of 2·cp for cp ≤ 2)
YARN = YarnConfig(enabled=True, factor=4.0, original_max_position_embeddings=16)


def model_config(preset: str, case: str):
    cfg = get_preset(preset)
    if case == "yarn":
        cfg = dataclasses.replace(cfg, yarn=YARN)
    return cfg


def global_microbatches(case: str, vocab: int) -> tuple[list[dict], int, int]:
    """(all micro-batches of the global batch, sequence length, micro-batch size), before DP/CP split."""
    g = torch.Generator().manual_seed(1000)
    if case == "packed":
        rows = []
        for _ in range(4):
            docs = [torch.randint(0, vocab, (n + 1,), generator=g) for n in DOC_TOKENS]
            rows.append(pack_documents(docs, multiple=4))
        return rows, PACKED_SEQ, 1
    tokens = eq.global_batch(vocab)
    causal = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool).triu(1)
    rank1 = cp_token_index(SEQ, 1, 2)  # what CP rank 1 holds when cp=2
    out = []
    for i in range(0, tokens.shape[0], eq.MICRO_BATCH):
        block = tokens[i : i + eq.MICRO_BATCH]
        loss_mask = torch.ones(block.shape[0], SEQ)
        loss_mask[:, :3] = 0
        if i == 0:
            loss_mask[:, rank1] = 0  # rank 1 of a CP=2 run sees no loss token in this micro-batch
        out.append(dict(
            tokens=block[:, :-1].contiguous(), labels=block[:, 1:].contiguous(), loss_mask=loss_mask,
            position_ids=torch.arange(SEQ).expand(block.shape[0], SEQ).contiguous(), attention_mask=causal,
        ))
    return out, SEQ, eq.MICRO_BATCH


def train_cp(preset: str, cases: list[str], parallel: ParallelConfig, init_root: str | None,
             save_root: str | None, final_root: str, steps: int = 3) -> dict:
    """Every case in one process group (spawning is the slow part): {case: losses and token counts}.

    Checkpoints live in `{root}/{case}`: initial weights are loaded from init_root (or saved to save_root).
    """
    from megatron.core import parallel_state

    from megatron_qwen.model.build import build_model
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.step import build_optimizer, train_step, wrap_model

    init_distributed(parallel, model_config(preset, cases[0]), PACKED_SEQ, seed=1234)
    out = {}
    for case in cases:
        cfg = model_config(preset, case)
        mbs_all, seq, micro = global_microbatches(case, cfg.vocab_size)
        chunks = build_model(cfg, parallel, seq)
        if save_root:
            eq._save(chunks, f"{save_root}/{case}")
        if init_root:
            eq._load(chunks, f"{init_root}/{case}")
        wrapped = wrap_model(chunks, parallel)
        optimizer = build_optimizer(wrapped, eq.EQUIVALENCE_OPTIM, parallel)
        dp_rank = parallel_state.get_data_parallel_rank()
        dp_size = parallel_state.get_data_parallel_world_size()
        share = len(mbs_all) // dp_size
        mine = [shard_batch_for_cp(b) for b in mbs_all[dp_rank * share : (dp_rank + 1) * share]]
        losses = [train_step(wrapped, optimizer, mine, seq, micro).loss for _ in range(steps)]
        eq._save(chunks, f"{final_root}/{case}")
        out[case] = dict(
            losses=losses,
            cp_rank=parallel_state.get_context_parallel_rank(),
            tokens=[float(b["loss_mask"].sum()) for b in mine],
        )
    return out
