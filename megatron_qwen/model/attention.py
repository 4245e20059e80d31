"""Core attention for the local (non-Transformer-Engine) spec, with context parallelism and packing.

megatron-core's local `DotProductAttention` refuses context parallelism and packed sequences; on GPU the
TE spec's attention provides both. This module is their home on CPU: it computes softmax(QKᵀ/√d)V with
torch's scaled_dot_product_attention under an explicit boolean mask, with GQA by repeating K/V per group.

Context parallelism: each CP rank holds chunks r and 2·cp−1−r of every (packed) document
(`context_parallel.cp_token_index`). Keys and values are all-gathered across the CP group (cheap with
GQA: only the query groups travel) and put back in sequence order, so every query sees all keys; the
mask is then built from the query's true position: causal (key position ≤ query position) and, for
packed rows, the same document only. Any `cp_comm_type` (p2p, all_gather, a2a, a2a+p2p — the TE
choices) gives the same numbers here, because this module always all-gathers.

Packed sequences arrive in megatron's THD format (`packed_seq_params.qkv_format == "thd"`, q/k/v as
[t, heads, dim], one packed row) with global `cu_seqlens`; the mask is block-diagonal causal.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_qwen.model.context_parallel import cp_token_index, document_ids


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 0 across a group; backward sums the gradients and keeps this rank's slice.

    (all_reduce + slice instead of reduce_scatter, which gloo lacks.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        n = grad.shape[0] // dist.get_world_size(ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad[rank * n : (rank + 1) * n], None


class LocalCoreAttention(MegatronModule):
    """Inputs [s, b, heads, dim] (or [t, heads, dim] packed); output [s, b, heads·dim] (or [t, heads·dim])."""

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
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.heads_per_partition = config.num_attention_heads // tp
        self.groups_per_partition = config.num_query_groups // tp
        self.cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
        self.cp_comm_type = cp_comm_type or config.cp_comm_type

    def _cp(self) -> tuple[int, int, object]:
        group = self.cp_group or parallel_state.get_context_parallel_group(check_initialized=False)
        if group is None or dist.get_world_size(group) == 1:
            return 1, 0, None
        return dist.get_world_size(group), dist.get_rank(group), group

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
        if attention_bias is not None:
            raise NotImplementedError("attention_bias is not supported by the local attention")
        thd = packed_seq_params is not None and packed_seq_params.qkv_format == "thd"
        cu_seqlens = None
        if packed_seq_params is not None:
            if not thd:
                raise NotImplementedError(f"packed qkv_format {packed_seq_params.qkv_format!r}; use 'thd'")
            cu_seqlens = packed_seq_params.cu_seqlens_q_padded
            if cu_seqlens is None:
                cu_seqlens = packed_seq_params.cu_seqlens_q
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            attention_mask = None  # cu_seqlens define the mask
        sq, b, heads, dim = query.shape
        cp_size, cp_rank, group = self._cp()
        total = sq * cp_size
        q_pos = cp_token_index(total, cp_rank, cp_size, cu_seqlens).to(query.device)
        cached = cp_size == 1 and key.shape[0] != sq
        if cached:  # queries are the last sq of sk positions (a KV cache)
            total = key.shape[0]
            q_pos = q_pos + (total - sq)
        if cp_size > 1:
            key, value = self._gather_keys_values(key, value, total, cp_size, group, cu_seqlens)
        mask = self._allowed(attention_mask, q_pos, total, cu_seqlens, query.device)

        repeat = heads // key.shape[2]
        q = query.permute(1, 2, 0, 3)  # [b, h, sq, d]
        if cached and not self.training:  # generation: let SDPA share each K/V group instead of copying the cache
            k, v = key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale,
                                                 enable_gqa=repeat > 1)
            return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)
        k = key.permute(1, 2, 0, 3).repeat_interleave(repeat, dim=1)
        v = value.permute(1, 2, 0, 3).repeat_interleave(repeat, dim=1)
        dropout = self.dropout_p if self.training else 0.0
        if dropout > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.softmax_scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.softmax_scale)
        out = out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)
        return out.squeeze(1) if thd else out

    @staticmethod
    def _gather_keys_values(key, value, total, cp_size, group, cu_seqlens):
        """Full-sequence K and V in sequence order, gathered from every CP rank (differentiably)."""
        held = torch.cat([cp_token_index(total, r, cp_size, cu_seqlens) for r in range(cp_size)])
        order = torch.argsort(held).to(key.device)
        key = _GatherSequence.apply(key, group).index_select(0, order)
        value = _GatherSequence.apply(value, group).index_select(0, order)
        return key, value

    @staticmethod
    def _allowed(attention_mask, q_pos, total, cu_seqlens, device) -> torch.Tensor:
        """Boolean [.., sq, total] mask, True where a query may attend a key (megatron's masks mark the opposite).

        An explicit mask holds this rank's query rows ([.., sq, total]) or all rows ([.., total, total]);
        without one the mask is causal on true positions, within each document of a packed row.
        """
        sq = q_pos.numel()
        if attention_mask is not None:
            allowed = ~attention_mask.bool()
            if allowed.shape[-2] != sq:
                allowed = allowed.index_select(-2, q_pos)
            return allowed
        k_pos = torch.arange(total, device=device)
        allowed = k_pos[None, :] <= q_pos[:, None]
        if cu_seqlens is not None:
            doc = document_ids(cu_seqlens, total).to(device)
            allowed &= doc[None, :] == doc[q_pos][:, None]
        return allowed


class SelfAttentionCachedRope(SelfAttention):
    """megatron-core's `SelfAttention` whose static KV cache holds keys with RoPE already applied.

    With megatron's static-batching KV cache (generation, `model/generation.py`) megatron stores un-rotated
    keys and rotates the whole cached prefix again at every decode step (only its GPU flash-decode path
    rotates before caching), so each step's work grew with the prefix. Here each new key is rotated once, at
    its own positions, before it is stored, and the cached prefix is used as it is: the same elementwise
    rotation of the same key at the same position, so the numbers are unchanged. Training and evaluation
    without an inference context take megatron's path untouched.
    """

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs):
        rotate = (inference_context is not None and inference_context.is_static_batching()
                  and rotary_pos_emb is not None and rotary_pos_emb[1] is not None and not self.config.flash_decode)
        if rotate:
            start = inference_context.sequence_len_offset
            key = apply_rotary_pos_emb(key, rotary_pos_emb[1][start:start + key.size(0)], config=self.config,
                                       mscale=self._yarn_concentration_factor, cp_group=self.pg_collection.cp)
        out = super()._adjust_key_value_for_inference(inference_context, query, key, value, rotary_pos_emb, *args,
                                                      **kwargs)
        if rotate:  # the cached keys are rotated: only the queries still need RoPE
            query, key, value, (q_pos_emb, _), mask_type, block_table = out
            out = (query, key, value, (q_pos_emb, None), mask_type, block_table)
        return out
