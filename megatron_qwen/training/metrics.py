"""Model FLOPs, TFLOP/s per device, MFU against a peak table, and memory — the formula written once.

Forward FLOPs per token of a Qwen2 decoder (matmuls only, 2 FLOPs per multiply-add, s = sequence length):
    per layer:  2·h·(q + 2·kv)      q/k/v projections   (q = heads·d, kv = groups·d)
              + 2·2·s·q             attention scores QKᵀ and scores·V (full s×s, no causal halving,
                                    the convention of Megatron-LM and PaLM's MFU)
              + 2·q·h               output projection
              + 2·3·h·f             SwiGLU MLP: gate, up, down
    head:       2·h·V               logits (counted for tied and untied heads alike: the matmul is done)
Training step = 3 × forward (backward = 2 × forward); activation recomputation is not counted (model
FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import psutil
import torch

from megatron_qwen.config import ModelConfig

# Dense peak TFLOP/s per device (no sparsity).
PEAK_TFLOPS = {
    ("H100", "bf16"): 989.0,
    ("H100", "fp8"): 1979.0,
    ("A100", "bf16"): 312.0,
}


def flops_per_token(model: ModelConfig, seq_length: int) -> float:
    """Forward FLOPs for one token (see the module docstring)."""
    h, f, d, V = model.hidden_size, model.ffn_hidden_size, model.kv_channels, model.vocab_size
    q, kv = model.num_attention_heads * d, model.num_query_groups * d
    layer = 2 * h * (q + 2 * kv) + 4 * seq_length * q + 2 * q * h + 6 * h * f
    return float(model.num_layers * layer + 2 * h * V)


def train_flops(model: ModelConfig, seq_length: int, tokens: int) -> float:
    """Model FLOPs of one training step over `tokens` tokens (forward + backward)."""
    return 3.0 * flops_per_token(model, seq_length) * tokens


def device_peak_tflops(dtype: str, override: float | None = None) -> float | None:
    """Peak of this device for `dtype` ("bf16"/"fp8"), from the table; None when unknown (e.g. CPU)."""
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for (device, kind), peak in PEAK_TFLOPS.items():
        if device in name and kind == dtype:
            return peak
    return None


def memory_gib() -> dict[str, float]:
    """Peak allocated device memory on GPU; resident set size on CPU."""
    if torch.cuda.is_available():
        return {"mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"mem_gib": psutil.Process().memory_info().rss / 2**30}


def throughput(model: ModelConfig, seq_length: int, tokens: int, seconds: float, world_size: int,
               peak: float | None) -> dict[str, float | None]:
    """tokens/s (whole job), TFLOP/s per device and MFU for `tokens` tokens processed in `seconds`."""
    seconds = max(seconds, 1e-9)
    tflops = train_flops(model, seq_length, tokens) / seconds / world_size / 1e12
    return {
        "tokens_per_s": tokens / seconds,
        "tflops_per_device": tflops,
        "mfu": tflops / peak if peak else None,
    }
