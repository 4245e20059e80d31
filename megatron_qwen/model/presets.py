"""The Qwen2.5-Coder presets (Hugging Face config.json values, docs/formats.md) and tiny ones for tests.

Every preset uses SwiGLU, RMSNorm, non-interleaved RoPE with base 1e6, q/k/v bias and no other bias,
and GQA. `vocab_size` is the padded embedding size of the published checkpoints, so Megatron is told
not to pad further and the embedding keeps its HF shape at every TP size (both sizes divide by 8).
"""

from __future__ import annotations

import dataclasses

from megatron_qwen.config import ModelConfig


def _qwen(name, hidden, ffn, layers, heads, kv, head_dim, vocab, tied, eps) -> ModelConfig:
    return ModelConfig(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_query_groups=kv,
        kv_channels=head_dim,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        rms_norm_eps=eps,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
    )


PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-coder-0.5b": _qwen("qwen2.5-coder-0.5b", 896, 4864, 24, 14, 2, 64, 151936, True, 1e-6),
    "qwen2.5-coder-1.5b": _qwen("qwen2.5-coder-1.5b", 1536, 8960, 28, 12, 2, 128, 151936, True, 1e-6),
    "qwen2.5-coder-3b": _qwen("qwen2.5-coder-3b", 2048, 11008, 36, 16, 2, 128, 151936, True, 1e-6),
    "qwen2.5-coder-7b": _qwen("qwen2.5-coder-7b", 3584, 18944, 28, 28, 4, 128, 152064, False, 1e-6),
    "qwen2.5-coder-14b": _qwen("qwen2.5-coder-14b", 5120, 13824, 48, 40, 8, 128, 152064, False, 1e-5),
    "qwen2.5-coder-32b": _qwen("qwen2.5-coder-32b", 5120, 27648, 64, 40, 8, 128, 152064, False, 1e-5),
    # Tiny presets for CPU tests and the demo: 4 layers so PP=2 with 2 virtual stages divides them.
    "tiny": _qwen("tiny", 64, 176, 4, 4, 2, 16, 512, True, 1e-6),
    "tiny-untied": _qwen("tiny-untied", 64, 176, 4, 4, 2, 16, 512, False, 1e-6),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A fresh copy of a preset, with field overrides; unknown names list the choices."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def count_parameters(m: ModelConfig) -> int:
    """Exact parameter count of the architecture, by arithmetic (no weights allocated)."""
    h, f, d = m.hidden_size, m.ffn_hidden_size, m.kv_channels
    q_out, kv_out = m.num_attention_heads * d, 2 * m.num_query_groups * d
    attention = h * (q_out + kv_out) + (q_out + kv_out) + q_out * h  # qkv weight + qkv bias + o_proj
    mlp = 3 * h * f  # gate, up, down
    per_layer = attention + mlp + 2 * h  # two RMSNorm weights
    embeddings = m.vocab_size * h * (1 if m.tie_word_embeddings else 2)
    return embeddings + m.num_layers * per_layer + h  # final norm
