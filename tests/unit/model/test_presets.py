"""The six presets carry the published architectures; parameter counts by arithmetic and on meta."""

import pytest
import torch

from megatron_qwen.model.presets import PRESETS, count_parameters, get_preset

EXPECTED = {  # billions, from the architecture table (docs/formats.md)
    "qwen2.5-coder-0.5b": 0.494,
    "qwen2.5-coder-1.5b": 1.544,
    "qwen2.5-coder-3b": 3.086,
    "qwen2.5-coder-7b": 7.616,
    "qwen2.5-coder-14b": 14.77,
    "qwen2.5-coder-32b": 32.76,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_architecture(name):
    billions = count_parameters(PRESETS[name]) / 1e9
    assert billions == pytest.approx(EXPECTED[name], rel=0.005)


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-7b"])
def test_arithmetic_count_equals_transformers_model_on_meta(name):
    """The formula agrees with a real (meta-device, no memory) Qwen2ForCausalLM of the same shape."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m = PRESETS[name]
    hf = Qwen2Config(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups, head_dim=m.kv_channels,
        tie_word_embeddings=m.tie_word_embeddings, rms_norm_eps=m.rms_norm_eps,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(hf)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == count_parameters(m)


def test_preset_details():
    small = PRESETS["qwen2.5-coder-0.5b"]
    assert small.kv_channels == 64 and small.num_attention_heads * small.kv_channels == small.hidden_size
    assert [PRESETS[f"qwen2.5-coder-{s}"].tie_word_embeddings for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b")] == [
        True, True, True, False, False, False]
    assert PRESETS["qwen2.5-coder-14b"].rms_norm_eps == 1e-5 and PRESETS["qwen2.5-coder-7b"].rms_norm_eps == 1e-6
    for name, m in PRESETS.items():
        assert m.vocab_size % 8 == 0, f"{name}: TP=8 would pad the embedding"
        assert m.rope_theta == 1e6


def test_unknown_preset_lists_choices():
    with pytest.raises(KeyError, match="qwen2.5-coder-7b"):
        get_preset("qwen-7b")
