"""The micro-batch the model consumes: one typed layout, one causal mask, one place for dtype and device moves.

Every producer of batches (pretraining samples, packed SFT rows, DPO pairs, conversion checks, generation)
builds a `Batch` and every consumer calls `forward()`; nothing else builds masks or casts dtypes.

- Padded rows ([B, S]): `attention_mask` is the explicit causal mask (megatron-core's default on CPU
  would be CUDA-only), True where attention is masked.
- Packed rows ([1, S] holding several documents, THD on GPU): `attention_mask` is None and
  `packed_seq_params` carries `cu_seqlens`; attention is block-diagonal and RoPE restarts per document.
Objectives may add their own entries (DPO: `reference_logps`, `pair_ids`, `num_pairs`, `sequence_ids`):
data only, never hyperparameters.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from megatron_qwen.platform import on_gpu


class Batch(TypedDict, total=False):
    tokens: torch.Tensor  # [B, S] int64 input ids
    labels: torch.Tensor  # [B, S] int64 next-token ids
    loss_mask: torch.Tensor  # [B, S] float32, 1 where the label counts
    position_ids: torch.Tensor  # [B, S] int64
    attention_mask: torch.Tensor | None  # [1, 1, S, S] bool (True = masked), None for packed rows
    packed_seq_params: Any  # megatron PackedSeqParams for packed rows
    cu_seqlens: torch.Tensor  # packed rows: document boundaries


LONG_KEYS = ("tokens", "labels", "position_ids")


def causal_mask(seq_length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[1, 1, s, s] bool, True where attention is masked (the future)."""
    return torch.ones(1, 1, seq_length, seq_length, dtype=torch.bool, device=device).triu(1)


def finalize(batch: dict, seq_length: int | None = None) -> Batch:
    """Cast ids to int64 and the loss mask to float32; add the attention layout a batch of padded rows
    needs (`seq_length` given) or that packed rows need (`cu_seqlens` present)."""
    for key in LONG_KEYS:
        if key in batch:
            batch[key] = batch[key].long()
    if "loss_mask" in batch:
        batch["loss_mask"] = batch["loss_mask"].float()
    if "cu_seqlens" in batch and "packed_seq_params" not in batch:
        from megatron_qwen.model.context_parallel import packed_seq_params

        batch["packed_seq_params"] = packed_seq_params(batch["cu_seqlens"])
        batch["attention_mask"] = None
    elif seq_length is not None and "attention_mask" not in batch:
        batch["attention_mask"] = causal_mask(seq_length)
    return batch


def to_device(batch: dict, device: torch.device | None = None) -> dict:
    """Tensors of the batch on `device` (default: the GPU when there is one; on CPU nothing moves)."""
    if device is None:
        if not on_gpu():
            return batch
        device = torch.device("cuda", torch.cuda.current_device())
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward(model, batch: Batch, with_labels: bool = True) -> torch.Tensor:
    """The model on one batch: per-token loss (−log p of each label) with labels, logits without."""
    return model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                 labels=batch["labels"] if with_labels else None, packed_seq_params=batch.get("packed_seq_params"))
