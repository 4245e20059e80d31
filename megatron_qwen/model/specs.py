"""Layer specs: Transformer Engine on GPUs, our local spec everywhere else.

The TE spec (fused layernorm+linear, TE attention with context parallelism and THD packing, FP8) is
chosen when TE is importable and CUDA is present; otherwise the local spec, built from megatron-core's
parallel linears and MLP plus our `RMSNorm` (sequence-parallel aware) and `LocalCoreAttention`.
"""

from __future__ import annotations

import importlib.util

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_mlp_module_spec_for_backend,
)
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_qwen.config import ModelConfig
from megatron_qwen.model.attention import LocalCoreAttention, SelfAttentionCachedRope
from megatron_qwen.model.rmsnorm import RMSNorm
from megatron_qwen.platform import on_gpu


def transformer_engine_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def choose_impl(model: ModelConfig) -> str:
    """'transformer_engine' or 'local', honouring model.transformer_impl ('auto' picks by availability)."""
    te_ready = transformer_engine_available() and on_gpu()
    if model.transformer_impl == "auto":
        return "transformer_engine" if te_ready else "local"
    if model.transformer_impl == "transformer_engine" and not te_ready:
        raise RuntimeError(
            "model.transformer_impl='transformer_engine' needs transformer-engine and CUDA; "
            "install the `gpu` extra on a GPU machine or set model.transformer_impl=local"
        )
    if model.fp8_recipe is not None and model.transformer_impl == "local":
        raise RuntimeError("model.fp8_recipe needs the Transformer Engine spec; set model.fp8_recipe=null")
    return model.transformer_impl


class _QwenLocalBackend(LocalSpecProvider):
    """megatron-core's local backend with our norm and core attention swapped in."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False, has_residual: bool = False):
        return RMSNorm

    def core_attention(self):
        return LocalCoreAttention


def local_layer_spec() -> ModuleSpec:
    backend = _QwenLocalBackend()
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttentionCachedRope,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=LocalCoreAttention,
                    linear_proj=RowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=get_mlp_module_spec_for_backend(backend=backend),
            mlp_bda=get_bias_dropout_add,
            # Same checkpoint keys as the TE spec, whose norms are fused into the next linear.
            sharded_state_dict_keys_map={
                "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
            },
        ),
    )


def block_spec(config: TransformerConfig, impl: str, vp_stage: int | None) -> TransformerBlockSubmodules:
    """The layers of this pipeline (and virtual) stage plus the final norm."""
    if impl == "transformer_engine":
        return get_gpt_decoder_block_spec(
            config, use_transformer_engine=True, normalization="RMSNorm", vp_stage=vp_stage
        )
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[local_layer_spec()] * layers, layer_norm=RMSNorm)
