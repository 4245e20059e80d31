"""From our ModelConfig and ParallelConfig to megatron-core `GPTModel`s for this pipeline stage.

`build_transformer_config()` is the one place the Qwen2.5 architecture is spelled in megatron-core's
terms (SwiGLU, RMSNorm, q/k/v bias only, GQA, RoPE or YaRN, dropout off by default, recomputation, FP8), plus
the fusions and overlaps `model/perf.py` grants on a GPU (none on a CPU).
`build_model()` returns a list: one model chunk per virtual pipeline stage (a single chunk without VPP).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_qwen.config import ModelConfig, ParallelConfig, PerfConfig
from megatron_qwen.model.perf import Switches, resolve
from megatron_qwen.model.specs import block_spec, choose_impl
from megatron_qwen.platform import on_gpu

# What a model built outside training gets (conversion, evaluation): every switch that needs no process-wide
# setup; TP communication overlap needs TE's userbuffers, which only the trainer initializes.
WITHOUT_SETUP = PerfConfig(tp_comm_overlap=False)


@dataclasses.dataclass
class QwenTransformerConfig(TransformerConfig):
    """TransformerConfig plus the seven `yarn_*` attributes GPTModel reads for YaRN."""

    yarn_rotary_scaling_factor: float = 1.0
    yarn_original_max_position_embeddings: int = 32768
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_mscale: float = 1.0
    yarn_mscale_all_dim: float = 0.0
    yarn_correction_range_round_to_int: bool = True


def build_transformer_config(
    model: ModelConfig, parallel: ParallelConfig, params_dtype: torch.dtype = torch.float32,
    switches: Switches | None = None,
) -> QwenTransformerConfig:
    gpu = on_gpu()
    switches = switches or resolve(WITHOUT_SETUP, model, parallel)
    fp8 = {}
    if model.fp8_recipe is not None:
        fp8 = dict(
            fp8=model.fp8_format,
            fp8_recipe=model.fp8_recipe,
            fp8_amax_history_len=model.fp8_amax_history_len,
            fp8_amax_compute_algo=model.fp8_amax_compute_algo,
        )
    recompute = {}
    if model.recompute_granularity is not None:
        recompute = dict(recompute_granularity=model.recompute_granularity)
        if model.recompute_granularity == "full":
            recompute.update(
                recompute_method=model.recompute_method,
                recompute_num_layers=model.recompute_num_layers or 1,
            )
    y = model.yarn
    return QwenTransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=True,
        attention_dropout=model.attention_dropout,
        hidden_dropout=model.hidden_dropout,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        cp_comm_type=parallel.cp_comm_type if parallel.context_parallel_size > 1 else None,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        persist_layer_norm=False,
        # Fusions, overlaps, p2p batching: model/perf.py (on a CPU all off, p2p unbatched).
        **switches.transformer_config_kwargs(),
        # Initialize full weights on the CPU then shard: the same model at every TP size.
        use_cpu_initialization=not gpu,
        yarn_rotary_scaling_factor=y.factor if y.enabled else 1.0,  # attention reads it for plain RoPE too
        yarn_original_max_position_embeddings=y.original_max_position_embeddings,
        yarn_beta_fast=y.beta_fast,
        yarn_beta_slow=y.beta_slow,
        yarn_mscale=y.mscale,
        yarn_mscale_all_dim=y.mscale_all_dim,
        yarn_correction_range_round_to_int=y.correction_range_round_to_int,
        **recompute,
        **fp8,
    )


def build_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    seq_length: int,
    params_dtype: torch.dtype = torch.float32,
    switches: Switches | None = None,
) -> list[GPTModel]:
    """The GPTModel chunks this rank holds (parallel state must be initialized); `switches` as the trainer
    resolved them (default: `WITHOUT_SETUP` resolved for this machine)."""
    config = build_transformer_config(model, parallel, params_dtype, switches)
    impl = choose_impl(model)
    vpp = parallel.virtual_pipeline_model_parallel_size
    stages = range(vpp) if vpp else [None]
    chunks = []
    for vp_stage in stages:
        chunk = GPTModel(
            config=config,
            transformer_layer_spec=block_spec(config, impl, vp_stage),
            vocab_size=model.vocab_size,
            max_sequence_length=max(seq_length, model.max_position_embeddings),
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            share_embeddings_and_output_weights=model.tie_word_embeddings,
            position_embedding_type="yarn" if model.yarn.enabled else "rope",
            rotary_percent=1.0,
            rotary_base=int(model.rope_theta),
            vp_stage=vp_stage,
        )
        if not on_gpu():
            chunk = chunk.to(dtype=params_dtype)
        chunks.append(chunk)
    return chunks
