"""Tiny random transformers `Qwen2ForCausalLM` checkpoints for the conversion tests.

Weights are drawn with std 0.1 (transformers' default 0.02 leaves attention so weak that a swapped
KV group barely moves the logits), norms are jittered around 1 and q/k/v biases are non-zero, so every
tensor visibly matters. All have 4 layers, so PP=2 with 2 virtual stages divides them.
"""

from __future__ import annotations

from pathlib import Path

import torch

# name: (heads, kv groups, hidden, head_dim, vocab, tied, yarn, dtype)
MODELS = {
    "gqa1-untied": (4, 4, 64, 16, 256, False, False, torch.float32),
    "gqa2-tied-bf16": (4, 2, 64, 16, 256, True, False, torch.bfloat16),
    "gqa7-untied": (14, 2, 112, 8, 320, False, False, torch.float32),
    "gqa2-tied-yarn": (4, 2, 64, 16, 256, True, True, torch.float32),
}


def hf_config(name: str, layers: int = 4):
    from transformers import Qwen2Config

    heads, kv, hidden, head_dim, vocab, tied, yarn, _ = MODELS[name]
    extra = {}
    if yarn:
        # transformers 4.x spelling, as published Qwen2.5 checkpoints write it
        extra["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    if head_dim * heads != hidden:
        extra["head_dim"] = head_dim
    return Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 16, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied, rope_theta=1e6,
        max_position_embeddings=256, rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=1, eos_token_id=2,
        **extra,
    )


def make_hf_model(path: str | Path, name: str, seed: int = 0, layers: int = 4):
    """Save a random model `name` to `path` (safetensors) and return it."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(hf_config(name, layers))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model = model.to(MODELS[name][-1])
    model.save_pretrained(str(path))
    return model
