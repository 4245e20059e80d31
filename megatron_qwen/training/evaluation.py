"""Held-out evaluation inside training: the objective's loss and metrics on validation batches.

Every `train.eval_interval` steps the trainer runs `train.eval_iters` global batches of the validation
source forward-only through the same schedule and objective as training, and logs `val_loss` plus
`val/<metric>` for each metric the objective reports (DPO: rewards, accuracy, log-probs).
"""

from __future__ import annotations

import torch

from megatron_qwen.config import Config
from megatron_qwen.model.batch import to_device
from megatron_qwen.training.datasets.sampling import microbatches
from megatron_qwen.training.metrics import MetricsWindow
from megatron_qwen.training.objectives import Objective
from megatron_qwen.training.step import reduce_reports, run_forward_backward


class Evaluator:
    def __init__(self, cfg: Config, objective: Objective, chunks, source, dp_rank: int, dp: int):
        self.cfg, self.objective, self.chunks, self.source = cfg, objective, chunks, source
        self.dp_rank, self.dp = dp_rank, dp

    def due(self, step: int) -> bool:
        interval = self.cfg.train.eval_interval
        return bool(interval and self.source is not None and step % interval == 0)

    def run(self) -> dict[str, float]:
        """{"val_loss": ..., "val/<metric>": ...} over train.eval_iters global batches (collective)."""
        t, seq = self.cfg.train, self.cfg.data.seq_length
        window = MetricsWindow()
        for chunk in self.chunks:
            chunk.eval()
        with torch.no_grad():
            for i in range(t.eval_iters):
                mbs = [to_device(b) for b in microbatches(self.source, i * t.global_batch_size, t.global_batch_size,
                                                          t.micro_batch_size, self.dp_rank, self.dp, seq)]
                reports = run_forward_backward(self.chunks, mbs, seq, t.micro_batch_size, forward_only=True,
                                               step_func=self.objective.forward_step)
                window.add(reduce_reports(reports, self.objective.report_keys))
        for chunk in self.chunks:
            chunk.train()
        means = window.pop()
        return {"val_loss": means.pop("loss", float("nan")), **{f"val/{k}": v for k, v in means.items()}}
