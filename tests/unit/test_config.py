"""Every layout rule fails before any process group exists, with a message naming fields and fix."""

import dataclasses

import pytest

from megatron_qwen.config import (
    ConfigError,
    ParallelConfig,
    derive_data_parallel_size,
    validate_model_parallel,
)
from megatron_qwen.model.presets import get_preset


def P(**kw):
    return dataclasses.replace(ParallelConfig(), **kw)


def test_world_size_must_factor():
    with pytest.raises(ConfigError, match=r"world size \(6\) must be divisible by tensor_model_parallel_size \(4\)"):
        derive_data_parallel_size(P(tensor_model_parallel_size=4), 6)
    with pytest.raises(ConfigError, match=r"set data_parallel_size=2"):
        derive_data_parallel_size(P(tensor_model_parallel_size=2, data_parallel_size=4), 4)
    assert derive_data_parallel_size(P(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 8) == 2


@pytest.mark.parametrize(
    "preset, layout, seq, message",
    [
        ("qwen2.5-coder-0.5b", dict(tensor_model_parallel_size=4), 4096,
         r"num_attention_heads \(14\) must be divisible by tensor_model_parallel_size \(4\)"),
        ("qwen2.5-coder-0.5b", dict(tensor_model_parallel_size=7), 4096,
         r"num_query_groups \(2\) must be divisible by tensor_model_parallel_size \(7\)"),
        ("qwen2.5-coder-7b", dict(pipeline_model_parallel_size=3), 4096,
         r"num_layers \(28\) must be divisible by pipeline_model_parallel_size \(3\)"),
        ("qwen2.5-coder-7b", dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=4), 4096,
         r"virtual_pipeline_model_parallel_size \(4\) = 8"),
        ("tiny", dict(virtual_pipeline_model_parallel_size=2), 64,
         r"needs pipeline_model_parallel_size > 1"),
        ("qwen2.5-coder-7b", dict(context_parallel_size=4), 32769,
         r"seq_length \(32769\) must be divisible by 2 x context_parallel_size \(8\)"),
        ("qwen2.5-coder-7b", dict(tensor_model_parallel_size=4, sequence_parallel=True), 4098,
         r"must be divisible by tensor_model_parallel_size \(4\) with sequence_parallel"),
        ("qwen2.5-coder-7b", dict(sequence_parallel=True), 4096,
         r"sequence_parallel needs tensor_model_parallel_size > 1"),
        ("qwen2.5-coder-7b", dict(cp_comm_type="ring"), 4096, r"cp_comm_type"),
    ],
)
def test_layout_rules(preset, layout, seq, message):
    with pytest.raises(ConfigError, match=message):
        validate_model_parallel(get_preset(preset), P(**layout), seq)


def test_model_rules():
    with pytest.raises(ConfigError, match=r"fp8_recipe \('fp4'\) must be one of"):
        validate_model_parallel(get_preset("tiny", fp8_recipe="fp4"), P(), 64)
    with pytest.raises(ConfigError, match=r"recompute_method 'uniform' or 'block'"):
        validate_model_parallel(get_preset("tiny", recompute_granularity="full"), P(), 64)
    with pytest.raises(ConfigError, match=r"vocab_size \(510\) must be divisible by tensor_model_parallel_size \(4\)"):
        validate_model_parallel(get_preset("tiny", vocab_size=510, num_attention_heads=4, num_query_groups=4),
                                P(tensor_model_parallel_size=4), 64)


def test_valid_real_layouts_pass():
    validate_model_parallel(get_preset("qwen2.5-coder-7b"), P(tensor_model_parallel_size=4, context_parallel_size=2,
                                                              sequence_parallel=True), 32768)
    validate_model_parallel(get_preset("qwen2.5-coder-32b"), P(tensor_model_parallel_size=8, pipeline_model_parallel_size=4,
                                                               virtual_pipeline_model_parallel_size=2,
                                                               sequence_parallel=True), 8192)
