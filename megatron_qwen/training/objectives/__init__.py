"""Training objectives and their registry: `stage.objective` -> class (the one dispatch on that string).

Adding an objective is one module with an `Objective` subclass (base.py says what it provides) and one
line below; docs/objectives.md walks through it with the real objectives as the example.
"""

from __future__ import annotations

from megatron_qwen.config import ConfigError
from megatron_qwen.training.objectives.base import Objective, PrepareContext
from megatron_qwen.training.objectives.dpo import DPO
from megatron_qwen.training.objectives.pretrain import Pretrain
from megatron_qwen.training.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {
    "pretrain": Pretrain,
    "sft": SFT,
    "dpo": DPO,
}


def get_objective(name: str) -> type[Objective]:
    """The objective class registered under `name` (a ConfigError naming the choices otherwise)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"stage.objective ({name!r}) is not implemented; this trainer runs {tuple(OBJECTIVES)}")
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "Objective", "PrepareContext", "get_objective"]
