"""Weights & Biases from one rank (the last pipeline stage's first rank), or nothing when not configured.

`logging.wandb_project` unset or `wandb_mode=disabled`: a no-op logger, wandb is never imported.
Offline mode writes run files under `wandb_dir` with no network. The run id is, in order: the one kept in
the checkpoint (train_state["wandb_id"], so a resumed run continues the same W&B run), `logging.wandb_id`,
`WANDB_RUN_ID` (the Slurm launcher exports one per stage directory), or a new random id.
"""

from __future__ import annotations

import os
import uuid

from megatron_qwen.config import LoggingConfig


class NullLogger:
    run_id: str | None = None

    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    def __init__(self, cfg: LoggingConfig, config: dict, default_dir: str, run_id: str | None):
        import wandb

        directory = cfg.wandb_dir or default_dir
        os.makedirs(directory, exist_ok=True)
        self.run_id = run_id or os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:8]
        self.run = wandb.init(
            project=cfg.wandb_project, name=cfg.wandb_name, mode=cfg.wandb_mode, dir=directory,
            config=config, id=self.run_id, resume="allow",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg: LoggingConfig, config: dict, default_dir: str, run_id: str | None, is_logging_rank: bool):
    if not is_logging_rank or not cfg.wandb_project or cfg.wandb_mode == "disabled":
        return NullLogger()
    return WandbLogger(cfg, config, default_dir, run_id)
