"""GPU tier: the Transformer Engine spec and FP8 on a real GPU. Skipped on machines without CUDA.

The last test checks the TE spec's numerics against the local spec on the same weights (padded and packed rows,
every fusion model/perf.py grants on). These cannot run on the CPU test machines; they are here so that a GPU CI runner (or a developer on a
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


def _local_vs_te(tmp_dir: str, packed: bool):
    """Per-token losses of the local spec and the TE spec on the same weights (written by the local model, read
    through the checkpoint's key map into the TE model), every granted fusion on."""
    import dataclasses

    from megatron_qwen.checkpointing.weights import load_model_checkpoint, save_model_checkpoint
    from megatron_qwen.config import ParallelConfig, PerfConfig
    from megatron_qwen.model import perf
    from megatron_qwen.model.batch import finalize, forward, to_device
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed

    seq, parallel = 256, ParallelConfig()
    base = get_preset("tiny", hidden_size=256, ffn_hidden_size=704, num_attention_heads=8, num_query_groups=2,
                      kv_channels=32, num_layers=4)
    init_distributed(parallel, base, seq)
    losses = {}
    torch.manual_seed(0)
    tokens = torch.randint(0, base.vocab_size, (1 if packed else 2, seq))
    batch = {"tokens": tokens, "labels": tokens.roll(-1, 1), "loss_mask": torch.ones_like(tokens),
             "position_ids": torch.arange(seq).expand_as(tokens).contiguous()}
    if packed:  # three documents in one row, positions restart per document
        bounds = torch.tensor([0, 100, 180, seq], dtype=torch.int32)
        batch["cu_seqlens"] = bounds
        batch["position_ids"] = torch.cat([torch.arange(b - a) for a, b in zip(bounds[:-1], bounds[1:])]).view(1, -1)
    for impl in ("local", "transformer_engine"):
        model = dataclasses.replace(base, transformer_impl=impl)
        switches = perf.resolve(PerfConfig(), model, parallel, packed)
        (chunk,) = build_model(model, parallel, seq, torch.bfloat16, switches)
        if impl == "local":
            save_model_checkpoint([chunk], tmp_dir, model)
        else:
            load_model_checkpoint([chunk], tmp_dir)
        with torch.no_grad():
            losses[impl] = forward(chunk, to_device(finalize(dict(batch), None if packed else seq))).float().cpu()
    return losses


@pytest.mark.parametrize("packed", [False, True])
def test_te_spec_matches_local_spec_on_the_same_weights(tmp_path, packed):
    from megatron_qwen.platform.spawn import run_workers

    losses = run_workers(1, _local_vs_te, str(tmp_path / "ckpt"), packed)[0]
    local, te = losses["local"], losses["transformer_engine"]
    assert local.shape == te.shape
    # bf16 with different kernels (fused RoPE, flash/fused attention, fused norms): per-token losses agree to
    # bf16 rounding, the mean to a few thousandths.
    assert (local - te).abs().max() < 0.1, (local - te).abs().max()
    assert abs(local.mean() - te.mean()) < 5e-3
