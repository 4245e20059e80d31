"""GPU tier: the Transformer Engine spec and FP8 on a real GPU. Skipped on machines without CUDA.

These cannot run on the CPU test machines; they are here so that a GPU CI runner (or a developer on a
GPU node: `make test PYTEST_ARGS=tests/gpu`) checks what the CPU suite can only fake.
"""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _te_forward(fp8_recipe):
    from megatron_qwen.platform.spawn import run_workers

    return run_workers(1, _worker, fp8_recipe)[0]


def _worker(fp8_recipe):
    import contextlib

    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed

    model = get_preset("tiny", transformer_impl="transformer_engine", fp8_recipe=fp8_recipe,
                       hidden_size=128, ffn_hidden_size=256, num_attention_heads=4, kv_channels=32)
    parallel = ParallelConfig()
    init_distributed(parallel, model, 128)
    (chunk,) = build_model(model, parallel, 128, torch.bfloat16)
    tokens = torch.randint(0, model.vocab_size, (2, 128), device="cuda")
    pos = torch.arange(128, device="cuda").expand(2, 128)
    ctx = contextlib.nullcontext()
    if fp8_recipe is not None:
        from megatron.core.fp8_utils import get_fp8_context

        ctx = get_fp8_context(chunk.config)
    with ctx:
        loss = chunk(tokens, pos, None, labels=tokens)
    loss.float().mean().backward()
    return float(loss.float().mean())


def test_te_spec_trains_in_bf16():
    loss = _te_forward(None)
    assert 5.0 < loss < 7.5  # ~ln(512) for a random tiny model


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="FP8 needs Hopper (sm90) or newer")
@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_te_fp8_forward_backward(recipe):
    loss = _te_forward(recipe)
    assert 5.0 < loss < 7.5
