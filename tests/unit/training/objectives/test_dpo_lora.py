"""DPO with LoRA: the reference log-probs are the base model's, computed by the policy with its adapters off.

On the tiny model in one process: the base model's table is computed before any adapter exists; adapters with
random (nonzero) B then change the policy's log-probs, and DPO's `prepare` — as after a resume, with no
reference cache and no way to load a second model — must still produce exactly the base table.
"""

from __future__ import annotations

import torch

from megatron_qwen.config import Config, LoRAConfig
from megatron_qwen.training.objectives.base import PrepareContext
from tests.unit.training._toy import write_dpo

SEQ = 24


def _reference_tables(prefix: str) -> dict:
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.lora import apply_lora
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.objectives import dpo as dpo_mod
    from tests.distributed._lora import randomize_b

    model, parallel = get_preset("tiny"), ParallelConfig()
    init_distributed(parallel, model, SEQ, seed=1)
    chunks = build_model(model, parallel, SEQ)
    cfg = Config()
    cfg.data.blend, cfg.data.seq_length, cfg.train.micro_batch_size = [prefix], SEQ, 2
    cfg.post.pad_token_id = 0
    cfg.lora = LoRAConfig(enabled=True, rank=4, alpha=8.0)
    objective = dpo_mod.DPO(cfg)
    rows, _ = objective.build_sources(16, 0)
    base = dpo_mod.compute_reference_logps(chunks, rows, 2)
    apply_lora(chunks, cfg.lora, seed=1)
    randomize_b(chunks)
    policy = dpo_mod.compute_reference_logps(chunks, rows, 2)

    def no_second_model():
        raise AssertionError("LoRA-DPO must not load a second model")

    objective.prepare(PrepareContext(chunks, True, no_second_model), rows, None)
    after = dpo_mod.compute_reference_logps(chunks, rows, 2)  # adapters are on again after prepare
    return {"base": base, "policy": policy, "prepared": rows.reference, "after": after}


def test_lora_dpo_reference_is_the_base_model(tmp_path):
    from megatron_qwen.convert.importer import run_single_process

    prefix = write_dpo(str(tmp_path / "pairs"), 16, seed=2)
    r = run_single_process(_reference_tables, prefix)
    moved = float((r["policy"] - r["base"]).abs().max())
    print(f"\nadapters move the summed log-probs by up to {moved:.3f}; "
          f"prepared vs base {float((r['prepared'] - r['base']).abs().max()):.1e}")
    assert moved > 1e-2  # the adapters matter, so a reference computed with them on would fail below
    assert torch.equal(r["prepared"], r["base"])
    assert torch.equal(r["after"], r["policy"])
