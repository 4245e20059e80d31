"""The shape every training objective has; the trainer knows objectives only through it.

An objective is one class:
- `check(cfg, dp)` (classmethod): its config rules, run by `training.validate` before any process group;
  errors are `ConfigError`s naming the keys.
- `build_sources(train_samples, eval_samples)`: (train, validation or None) sample sources, addressed by
  global sample index (`training.datasets.sampling`).
- `prepare(ctx, train, valid)`: work that needs the built model before the first step, called once by
  the trainer (DPO: the frozen reference's log-probs). Default: nothing.
- `forward_step(data_iterator, model)`: megatron's forward-step contract, returning the output and a
  loss function. The loss function returns (loss sum, count, report), where the report maps each name of
  `("loss", *metrics)` to a [sum, count] tensor; `training.step.reduce_reports` turns every key into a
  global mean over the batch, on every layout. Hyperparameters live on the objective, never in batches.

The registry (`objectives/__init__.py`) maps `stage.objective` to the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

from megatron_qwen.config import Config, ConfigError
from megatron_qwen.model.batch import forward
from megatron_qwen.training.datasets.blend import parse_blend
from megatron_qwen.training.step import loss_func


@dataclass
class PrepareContext:
    """What `Objective.prepare` may use: the policy's chunks, whether the run resumed, and a loader of the
    stage's start weights as a fresh, frozen model (built only when called)."""

    chunks: list[torch.nn.Module]
    resumed: bool
    load_start_model: Callable[[], list[torch.nn.Module]]


class Objective:
    """Language modelling on the loss mask (the base behaviour; subclasses override what differs)."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ()  # report keys besides "loss", logged as-is and as val/<key>

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: Config, dp: int | None = None) -> None:
        """The config rules of this objective (dp: data-parallel size when known)."""

    def build_sources(self, train_samples: int, eval_samples: int):
        raise NotImplementedError

    def prepare(self, ctx: PrepareContext, train, valid) -> None:
        """Before the first step (default: nothing)."""

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        return forward(model, batch), partial(loss_func, batch["loss_mask"])

    @property
    def report_keys(self) -> tuple[str, ...]:
        return ("loss", *self.metrics)


def require_blend(cfg: Config, mode: str) -> list[tuple[float, str]]:
    """data.blend parsed; post-training objectives need one (mock data has no loss mask)."""
    try:
        blend = parse_blend(cfg.data.blend)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not blend:
        raise ConfigError(f"stage.objective={cfg.stage.objective} needs data.blend: prefixes written by "
                          f"`megatron-qwen preprocess --mode {mode}` (mock data has no loss mask)")
    return blend

