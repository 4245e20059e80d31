"""Greedy generation with a megatron-core GPTModel, for evaluations (needle, FIM exact match).

Deliberately simple: every new token runs the whole sequence again (no KV cache), with an explicit
causal mask, on one model-parallel rank (TP = PP = CP = 1). That is exact and enough for short answers
after long prompts; a KV-cached or model-parallel generator is future work.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from megatron_qwen.model.batch import causal_mask


@torch.no_grad()
def greedy_generate(model, prompt: list[int], max_new_tokens: int, stop_ids: frozenset[int] = frozenset()) -> list[int]:
    """The greedy continuation of `prompt` (at most max_new_tokens ids, ending early at a stop id)."""
    if (parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size()) != (1, 1, 1):
        raise NotImplementedError("greedy_generate runs on one rank: use TP = PP = CP = 1 for evaluation")
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        n = ids.shape[1]
        mask = causal_mask(n, device)
        logits = model(ids, torch.arange(n, device=device)[None], mask)
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token in stop_ids:
            break
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
    return out
