"""RMSNorm for the local spec that also works under sequence parallelism.

megatron-core's torch-backed norm refuses `sequence_parallel`. Under SP each TP rank normalizes its own
slice of the sequence, so the weight's gradient is a partial sum; marking the weight `sequence_parallel`
makes megatron's `finalize_model_grads` all-reduce it across the TP group.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **kwargs):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same order of operations as transformers' Qwen2RMSNorm: normalize in fp32, then scale.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
