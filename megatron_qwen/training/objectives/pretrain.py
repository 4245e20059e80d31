"""Pretraining: next-token prediction on every token of megatron-core GPT datasets (or the learnable mock)."""

from __future__ import annotations

from megatron_qwen.training.datasets.pretrain import build_sources
from megatron_qwen.training.objectives.base import Objective


class Pretrain(Objective):
    name = "pretrain"

    def build_sources(self, train_samples: int, eval_samples: int):
        cfg = self.cfg
        return build_sources(cfg.data, train_samples, eval_samples, cfg.seed, cfg.model.vocab_size)
