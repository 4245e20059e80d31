"""Spec selection: Transformer Engine when TE and CUDA are present (faked here), local otherwise."""

import pytest
import torch

from megatron_qwen.config import ParallelConfig
from megatron_qwen.model import build, specs
from megatron_qwen.model.presets import get_preset


def test_local_spec_without_cuda():
    assert not torch.cuda.is_available()
    assert specs.choose_impl(get_preset("tiny")) == "local"
    with pytest.raises(RuntimeError, match="needs transformer-engine and CUDA"):
        specs.choose_impl(get_preset("tiny", transformer_impl="transformer_engine"))


def test_te_spec_selected_and_fp8_reaches_megatron_config(fake_gpu, monkeypatch):
    model = get_preset("qwen2.5-coder-7b", fp8_recipe="blockwise", fp8_format="e4m3", fp8_amax_history_len=16)
    assert specs.choose_impl(model) == "transformer_engine"
    config = build.build_transformer_config(model, ParallelConfig(tensor_model_parallel_size=4), torch.bfloat16)
    assert (config.fp8, config.fp8_recipe, config.fp8_amax_history_len) == ("e4m3", "blockwise", 16)
    assert config.bf16 and config.params_dtype == torch.bfloat16
    assert config.batch_p2p_comm and not config.use_cpu_initialization
    calls = []
    monkeypatch.setattr(specs, "get_gpt_decoder_block_spec", lambda *a, **k: calls.append((a, k)) or "te-block")
    assert specs.block_spec(config, "transformer_engine", vp_stage=None) == "te-block"
    assert calls[0][1]["use_transformer_engine"] is True and calls[0][1]["normalization"] == "RMSNorm"


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "mxfp8", "blockwise"])
def test_every_fp8_recipe_is_wired(fake_gpu, recipe):
    config = build.build_transformer_config(get_preset("tiny", fp8_recipe=recipe), ParallelConfig(), torch.bfloat16)
    assert config.fp8_recipe == recipe and config.fp8 == "hybrid"


def test_local_spec_has_our_modules():
    from megatron_qwen.model.attention import LocalCoreAttention
    from megatron_qwen.model.rmsnorm import RMSNorm

    layer = specs.local_layer_spec().submodules
    assert layer.input_layernorm is RMSNorm and layer.pre_mlp_layernorm is RMSNorm
    assert layer.self_attention.submodules.core_attention is LocalCoreAttention


def test_recomputation_reaches_config():
    sel = build.build_transformer_config(get_preset("tiny", recompute_granularity="selective"), ParallelConfig())
    assert sel.recompute_granularity == "selective"
    full = build.build_transformer_config(
        get_preset("tiny", recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2),
        ParallelConfig(),
    )
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "uniform", 2)
