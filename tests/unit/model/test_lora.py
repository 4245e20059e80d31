"""LoRA on the tiny model in one process: the trainable parameters are exactly the adapters, their count is the
closed form rank·(in + out) per targeted linear per layer, fresh adapters leave the model unchanged (B = 0), A
follows the kaiming-uniform bound, and `adapters_disabled` gives back the base model."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_qwen.config import ConfigError, LoRAConfig, validate_lora

SEQ = 16


def _check(preset: str, lora: LoRAConfig) -> dict:
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.batch import causal_mask
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.lora import adapters, adapters_disabled, apply_lora, trainable_parameter_count
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed

    model, parallel = get_preset(preset), ParallelConfig()
    init_distributed(parallel, model, SEQ, seed=1)
    chunks = build_model(model, parallel, SEQ)
    tokens = torch.randint(0, model.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(0))
    args = (tokens, torch.arange(SEQ)[None].expand(2, SEQ), causal_mask(SEQ))
    chunks[0].eval()
    with torch.no_grad():
        before = chunks[0](*args)
        apply_lora(chunks, lora, seed=1)
        fresh = chunks[0](*args)
        for _, a in adapters(chunks):
            a.B.normal_()
        moved = chunks[0](*args)
        with adapters_disabled(chunks):
            off = chunks[0](*args)
    named = dict(chunks[0].named_parameters())
    return {
        "trainable": sum(p.numel() for p in named.values() if p.requires_grad),
        "formula": trainable_parameter_count(model, lora),
        "frozen_named_lora": [n for n, p in named.items() if ".lora." in n and not p.requires_grad],
        "trainable_base": [n for n, p in named.items() if ".lora." not in n and p.requires_grad],
        "a_bounds": [(float(a.A.abs().max()), 1 / math.sqrt(a.A.shape[1])) for _, a in adapters(chunks)],
        "fresh_equal": torch.equal(before, fresh), "moved": float((moved - before).abs().max()),
        "off_equal": torch.equal(before, off),
    }


@pytest.mark.parametrize("preset, lora", [
    ("tiny", LoRAConfig(enabled=True, rank=4, alpha=8.0)),
    ("tiny-untied", LoRAConfig(enabled=True, rank=3, alpha=3.0, target_modules=["linear_qkv", "linear_fc2"])),
])
def test_adapters_are_the_only_trainable_parameters_and_match_the_formula(preset, lora):
    from megatron_qwen.convert.importer import run_single_process

    r = run_single_process(_check, preset, lora)
    assert r["trainable"] == r["formula"] > 0
    assert not r["frozen_named_lora"] and not r["trainable_base"]
    assert all(0 < got <= bound for got, bound in r["a_bounds"])
    assert r["fresh_equal"] and r["moved"] > 1e-3 and r["off_equal"]


def test_trainable_count_closed_form_by_hand():
    from megatron_qwen.model.lora import trainable_parameter_count
    from megatron_qwen.model.presets import get_preset

    m = get_preset("qwen2.5-coder-32b")  # 64 layers, hidden 5120, 40 heads, 8 KV groups, head 128, ffn 27648
    per_layer = 16 * ((5120 + 5120 + 2 * 1024) + (5120 + 5120) + (5120 + 2 * 27648) + (27648 + 5120))
    assert trainable_parameter_count(m, LoRAConfig(enabled=True, rank=16)) == 64 * per_layer


@pytest.mark.parametrize("change, key", [
    (dict(rank=0), "lora.rank"), (dict(alpha=0.0), "lora.alpha"), (dict(dropout=1.0), "lora.dropout"),
    (dict(target_modules=["q_proj"]), "lora.target_modules"),
])
def test_bad_lora_config_names_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        validate_lora(LoRAConfig(enabled=True, **change))
