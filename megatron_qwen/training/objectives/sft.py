"""SFT: the language-model loss on assistant answers only (the loss mask stored by `--mode sft`).

Samples are packed whole conversations (`training.datasets.sft`); the loss function is pretraining's
(masked per-token sum / token count), so a global batch's loss is the mean over all its answer tokens on
every layout. Coarse and fine SFT are the same objective with different data and learning rates.
"""

from __future__ import annotations

from megatron_qwen.config import Config, ConfigError
from megatron_qwen.training.datasets.sft import OVERLONG, build_sft_sources
from megatron_qwen.training.objectives.base import Objective, require_blend


class SFT(Objective):
    name = "sft"

    @classmethod
    def check(cls, cfg: Config, dp: int | None = None) -> None:
        require_blend(cfg, "sft")
        s, t = cfg.post.sft, cfg.train
        if cfg.data.packed_sequences and t.micro_batch_size != 1:
            raise ConfigError(f"data.packed_sequences=true needs train.micro_batch_size=1 (got {t.micro_batch_size}): "
                              "a packed row already holds many conversations; raise data.seq_length instead")
        if s.overlong not in OVERLONG:
            raise ConfigError(f"post.sft.overlong ({s.overlong!r}) must be one of {OVERLONG}")
        if not 0.0 <= s.fim_share < 1.0:
            raise ConfigError(f"post.sft.fim_share ({s.fim_share}) must be in [0, 1)")
        if s.fim_share > 0 and not s.fim_prefix:
            raise ConfigError(f"post.sft.fim_share={s.fim_share} needs post.sft.fim_prefix (an --mode sft-fim dataset)")

    def build_sources(self, train_samples: int, eval_samples: int):
        return build_sft_sources(self.cfg, train_samples, eval_samples)
