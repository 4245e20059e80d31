"""The FLOP formula agrees with the parameter count; MFU needs a known peak; rates are per device."""

from __future__ import annotations

import pytest

from megatron_qwen.model.presets import PRESETS, count_parameters
from megatron_qwen.training.metrics import PEAK_TFLOPS, device_peak_tflops, flops_per_token, throughput


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-7b", "tiny-untied"])
def test_forward_flops_are_two_per_matmul_weight_plus_attention(name):
    m = PRESETS[name]
    s = 4096
    q, kv = m.num_attention_heads * m.kv_channels, m.num_query_groups * m.kv_channels
    biases = m.num_layers * (q + 2 * kv)
    norms = m.num_layers * 2 * m.hidden_size + m.hidden_size
    input_embedding = m.vocab_size * m.hidden_size if not m.tie_word_embeddings else 0
    # Tied: the one embedding matrix is used as the head matmul, so it counts once either way.
    matmul_weights = count_parameters(m) - biases - norms - input_embedding
    expected = 2 * matmul_weights + m.num_layers * 4 * s * q
    assert flops_per_token(m, s) == expected


def test_7b_flops_per_token_at_8k():
    # 2·7.07e9 matmul weights (incl. head) + 28·4·8192·3584 attention ≈ 17.4 GFLOP per token forward
    assert flops_per_token(PRESETS["qwen2.5-coder-7b"], 8192) == pytest.approx(1.7429e10, rel=1e-4)


def test_throughput_and_mfu():
    m = PRESETS["qwen2.5-coder-7b"]
    rates = throughput(m, 8192, tokens=8192 * 64, seconds=2.0, world_size=8, peak=989.0)
    assert rates["tokens_per_s"] == 8192 * 32
    tflops = 3 * flops_per_token(m, 8192) * 8192 * 64 / 2.0 / 8 / 1e12
    assert rates["tflops_per_device"] == pytest.approx(tflops)
    assert rates["mfu"] == pytest.approx(tflops / 989.0)
    assert throughput(m, 8192, 1, 1.0, 1, None)["mfu"] is None


def test_peak_table_and_cpu():
    assert PEAK_TFLOPS[("H100", "bf16")] == 989.0 and PEAK_TFLOPS[("H100", "fp8")] == 1979.0
    assert device_peak_tflops("bf16") is None  # CPU: no peak, MFU shown as n/a
    assert device_peak_tflops("bf16", override=100.0) == 100.0
