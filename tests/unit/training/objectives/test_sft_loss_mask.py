"""SFT's loss sees only the assistant answers: on a packed THD row through the tiny GPTModel, changing the
label of a user (prompt) position leaves the loss unchanged; changing an answer label changes it."""

from __future__ import annotations

from megatron_qwen.platform.spawn import run_workers
from tests.unit.training._toy import HIGH, LOW, write_sft

SEQ = 64


def _losses(prefix: str) -> dict:
    import torch

    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.datasets.sft import PackedSFTDataset, SFTSource
    from megatron_qwen.training.step import forward_step

    model, parallel = get_preset("tiny"), ParallelConfig()
    init_distributed(parallel, model, SEQ, seed=1)
    chunk = build_model(model, parallel, SEQ)[0]
    ds = PackedSFTDataset(prefix, SEQ, 0)
    batch = SFTSource([ds], [1.0], 1, packed=True).collate([ds[0]], SEQ)

    def loss(b: dict) -> tuple[float, int]:
        with torch.no_grad():
            output, loss_func = forward_step(iter([b]), chunk)
            total, tokens, _ = loss_func(output)
        return float(total), int(tokens)

    labels, mask = batch["labels"][0], batch["loss_mask"][0]
    user = int(((labels >= LOW) & (labels < HIGH) & (mask == 0)).nonzero()[0])
    answer = int((mask == 1).nonzero()[0])
    changed_user = dict(batch, labels=batch["labels"].clone())
    changed_user["labels"][0, user] = 7
    changed_answer = dict(batch, labels=batch["labels"].clone())
    changed_answer["labels"][0, answer] = 7
    return {"base": loss(batch), "user": loss(changed_user), "answer": loss(changed_answer),
            "docs": len(batch["cu_seqlens"]) - 1, "mask_tokens": int(mask.sum())}


def test_sft_loss_ignores_user_tokens(tmp_path):
    prefix = write_sft(str(tmp_path / "sft"), 32, seed=7)
    (r,) = run_workers(1, _losses, prefix)
    assert r["docs"] >= 3, "the row should pack several conversations"
    assert r["base"][1] == r["mask_tokens"]  # token count = answer tokens only
    assert r["user"] == r["base"]  # bit-identical: the user position carries no loss
    assert abs(r["answer"][0] - r["base"][0]) > 1e-3
