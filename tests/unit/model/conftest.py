"""A fake GPU with Transformer Engine for building megatron-core configs on CPU (no TE module is constructed)."""

import pytest
import torch

from megatron_qwen.model import specs


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA and TE "present": on_gpu() and choose_impl() answer as on a GPU node with TE, and megatron-core's
    config check finds (dummy) fused RoPE kernels."""
    from megatron.core.models.common.embeddings import rope_utils

    monkeypatch.setattr(specs, "transformer_engine_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb_thd", lambda *a, **k: None, raising=False)
