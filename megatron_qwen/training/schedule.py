"""Learning-rate and weight-decay schedule: linear warmup, then cosine, warmup-stable-decay or constant.

A thin mapping from OptimConfig onto megatron-core's `OptimizerParamScheduler` (counted in optimizer
steps: one increment per step), whose `state_dict()` goes into every checkpoint.
"""

from __future__ import annotations

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_qwen.config import OptimConfig

SCHEDULES = {"cosine": "cosine", "wsd": "WSD", "constant": "constant", "linear": "linear"}


def build_scheduler(optimizer, optim: OptimConfig, train_iters: int) -> OptimizerParamScheduler:
    style = SCHEDULES[optim.schedule]
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if optim.warmup_steps else optim.lr,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=optim.warmup_steps,
        lr_decay_steps=max(train_iters, optim.warmup_steps + 1),
        lr_decay_style=style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=max(train_iters, 1),
        wd_incr_style="constant",
        # The checkpoint's schedule wins on resume; a new stage builds a fresh one instead of loading.
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=optim.wsd_decay_steps if style == "WSD" else None,
        lr_wsd_decay_style="cosine" if style == "WSD" else None,
    )


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
