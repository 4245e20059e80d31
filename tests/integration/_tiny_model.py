"""A tiny random transformers Qwen2 model with the small trained tokenizer's files, for end-to-end tests of
evaluation and serving (vocabulary 640 >= the tokenizer's 622 entries)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def make_tiny_hf(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=640, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=2048, initializer_range=0.2, rope_theta=10000.0)
    Qwen2ForCausalLM(cfg).save_pretrained(str(out))
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out
