"""Core attention for the local (non-Transformer-Engine) spec.

megatron-core's local `DotProductAttention` refuses context parallelism and packed sequences; on GPU the
TE spec's attention provides both. This module is their home on CPU: it computes softmax(QKᵀ/√d)V with
torch's scaled_dot_product_attention under an explicit mask, with GQA by repeating K/V per group.
Context parallelism and packed sequences (cu_seqlens) are added here by the long-context work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class LocalCoreAttention(MegatronModule):
    """Inputs [s, b, heads_per_partition, head_dim]; output [s, b, heads_per_partition * head_dim]."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        **kwargs,
    ):
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise NotImplementedError(
                "context parallelism in the local attention is not built yet; use the Transformer Engine spec"
            )
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.heads_per_partition = config.num_attention_heads // tp
        self.groups_per_partition = config.num_query_groups // tp

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise NotImplementedError("packed sequences in the local attention are not built yet")
        if attention_bias is not None:
            raise NotImplementedError("attention_bias is not supported by the local attention")
        sq, b, heads, dim = query.shape
        repeat = heads // key.shape[2]
        q = query.permute(1, 2, 0, 3)  # [b, h, sq, d]
        k = key.permute(1, 2, 0, 3).repeat_interleave(repeat, dim=1)
        v = value.permute(1, 2, 0, 3).repeat_interleave(repeat, dim=1)
        mask = self._allowed(attention_mask, sq, k.shape[2], q.device)
        dropout = self.dropout_p if self.training else 0.0
        if dropout > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.softmax_scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)

    def _allowed(self, attention_mask, sq, sk, device) -> torch.Tensor:
        """Boolean mask, True where a query may attend a key (megatron's masks mark the opposite)."""
        if attention_mask is not None:
            return ~attention_mask.bool()
        return torch.ones(sq, sk, dtype=torch.bool, device=device).tril(diagonal=sk - sq)
