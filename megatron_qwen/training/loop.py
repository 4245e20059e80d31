"""The training loop of one stage: build, initialize or resume, train, evaluate, log, checkpoint, stop.

Everything heavy is elsewhere (step.py: one optimizer step on megatron's schedules; data.py: samples by
global index; checkpoint.py; metrics.py; wandb_logger.py). SIGTERM or SIGUSR1 (launch.preemption's
StopSignal) makes every rank stop after the same step, save, and return without the FINISHED marker,
so the Slurm script requeues the stage; a stage that reaches train_iters saves and marks itself finished.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config import Config
from megatron_qwen.launch.preemption import StopSignal, mark_finished
from megatron_qwen.model.build import build_model
from megatron_qwen.platform import init_distributed
from megatron_qwen.training import checkpoint as ckpt_mod
from megatron_qwen.training import post
from megatron_qwen.training.data import build_sources, microbatches
from megatron_qwen.training.metrics import device_peak_tflops, memory_gib, throughput
from megatron_qwen.training.schedule import build_scheduler, current_lr
from megatron_qwen.training.step import (
    build_optimizer,
    forward_step,
    reduce_reports,
    run_forward_backward,
    train_step,
    wrap_model,
)
from megatron_qwen.training.wandb_logger import build_logger

log = logging.getLogger("megatron_qwen.train")

# stage.objective -> megatron forward-step function (batch -> output, loss function). Post-training adds
# "sft" (loss mask from the dataset) and "dpo" here, and to validate.OBJECTIVES.
STEP_FUNCS = {"pretrain": forward_step, **post.STEP_FUNCS}


def params_dtype(cfg: Config) -> torch.dtype:
    if cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def is_logging_rank() -> bool:
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0)


def _to_device(batches: list[dict]) -> list[dict]:
    if not torch.cuda.is_available():
        return batches
    return [{k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]


def initialize_weights(cfg: Config, chunks) -> None:
    """A fresh stage's weights: random, the previous stage's checkpoint, or an imported HF directory."""
    from megatron_qwen.convert.ckpt_io import load_model_checkpoint

    c = cfg.checkpoint
    if c.init_from == "checkpoint":
        path = ckpt_mod.resolve_checkpoint(c.init_path)
    elif c.init_from == "hf":
        from megatron_qwen.convert.importer import import_in_group

        path = Path(c.dir or ".") / "hf_import"
        if not path.is_dir():
            import_in_group(c.init_path, path, cfg.parallel, params_dtype(cfg), show_progress=False)
    else:
        return
    check_architecture(cfg, path)
    log.info("initializing weights from %s (fresh optimizer and schedule)", path)
    load_model_checkpoint(chunks, path)


ARCHITECTURE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "vocab_size", "tie_word_embeddings")


def check_architecture(cfg: Config, path: Path) -> None:
    """The checkpoint's recorded shapes must be the configured model's (RoPE/YaRN/length may change)."""
    from megatron_qwen.config import ConfigError
    from megatron_qwen.convert.ckpt_io import read_record

    saved, _ = read_record(path)
    diffs = [f"model.{k}: checkpoint {getattr(saved, k)} vs config {getattr(cfg.model, k)}"
             for k in ARCHITECTURE if getattr(saved, k) != getattr(cfg.model, k)]
    if diffs:
        raise ConfigError(f"checkpoint.init_path={cfg.checkpoint.init_path} has another architecture: "
                          + "; ".join(diffs))


def evaluate(cfg: Config, wrapped, source, dp_rank: int, dp: int) -> float:
    t, seq = cfg.train, cfg.data.seq_length
    for chunk in wrapped:
        chunk.eval()
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(t.eval_iters):
            mbs = _to_device(microbatches(source, i * t.global_batch_size, t.global_batch_size,
                                          t.micro_batch_size, dp_rank, dp, seq))
            reports = run_forward_backward(wrapped, mbs, seq, t.micro_batch_size, forward_only=True,
                                           step_func=STEP_FUNCS[cfg.stage.objective])
            loss, tokens = reduce_reports(reports)
            total += torch.tensor([loss * tokens, tokens], dtype=torch.float64)
    for chunk in wrapped:
        chunk.train()
    return float(total[0] / total[1].clamp_min(1))


class MetricsSink:
    """Console line + JSON lines file + W&B, all on the logging rank only."""

    def __init__(self, cfg: Config, config_dict: dict, run_id: str | None):
        self.active = is_logging_rank()
        root = Path(cfg.checkpoint.dir or ".")
        path = cfg.logging.metrics_file or (str(root / "metrics.jsonl") if cfg.checkpoint.dir else None)
        if self.active and path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a") if (self.active and path) else None
        self.wandb = build_logger(cfg.logging, config_dict, str(root), run_id, self.active)

    def emit(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        parts = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if v is not None]
        parts += [f"{k}=n/a" for k, v in metrics.items() if v is None]
        print(f"step {step} | " + " | ".join(parts), flush=True)
        if self.file:
            self.file.write(json.dumps({"step": step, **metrics}) + "\n")
            self.file.flush()
        self.wandb.log(metrics, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        self.wandb.finish()


def _shared_run_id(sink: MetricsSink) -> str | None:
    ids = [None] * dist.get_world_size()
    dist.all_gather_object(ids, sink.wandb.run_id)
    return next((i for i in ids if i), None)


def run(cfg: Config, config_dict: dict, config_yaml: str) -> dict:
    """Train one stage; returns {"losses": {step: loss}, "stopped": bool, "step": last step}."""
    t, c, seq = cfg.train, cfg.checkpoint, cfg.data.seq_length
    logging.getLogger("megatron").setLevel(logging.WARNING)  # megatron-core's INFO chatter
    dp = init_distributed(cfg.parallel, cfg.model, seq, cfg.seed)
    dp_rank = parallel_state.get_data_parallel_rank()
    chunks = build_model(cfg.model, cfg.parallel, seq, params_dtype(cfg))
    latest = ckpt_mod.find_latest(c.dir) if c.resume else None
    if latest is None:
        initialize_weights(cfg, chunks)
    wrapped = wrap_model(chunks, cfg.parallel)
    optimizer = build_optimizer(wrapped, cfg.optim, cfg.parallel)
    scheduler = build_scheduler(optimizer, cfg.optim, t.train_iters)
    state = {"step": 0, "wandb_id": None}
    if latest is not None:
        log.info("resuming from %s", latest)
        state = ckpt_mod.load(latest, chunks, optimizer, scheduler)
    if cfg.stage.objective in post.OBJECTIVES:  # SFT conversations / DPO pairs (+ the reference pass)
        train_src, valid_src = post.build_sources(cfg, wrapped, latest is not None, t.train_iters * t.global_batch_size,
                                                  max(t.eval_iters, 1) * t.global_batch_size)
    else:
        train_src, valid_src = build_sources(cfg.data, t.train_iters * t.global_batch_size,
                                             max(t.eval_iters, 1) * t.global_batch_size, cfg.seed, cfg.model.vocab_size)
    sink = MetricsSink(cfg, config_dict, state.get("wandb_id") or cfg.logging.wandb_id)
    run_id = _shared_run_id(sink)
    peak = device_peak_tflops("fp8" if cfg.model.fp8_recipe else "bf16", cfg.logging.peak_tflops)
    stop = StopSignal.install((signal.SIGTERM, signal.SIGUSR1))
    losses, step, stopped = {}, state["step"], False
    tokens_per_step = t.global_batch_size * seq
    window_start, window_steps = time.perf_counter(), 0

    def save(at: int) -> None:
        if c.dir:
            extra = {"consumed_samples": at * t.global_batch_size, "wandb_id": run_id, "stage": cfg.stage.name}
            ckpt_mod.save(c.dir, at, chunks, optimizer, scheduler, extra, cfg.model, config_yaml, c.keep_last)

    while step < t.train_iters:
        mbs = _to_device(microbatches(train_src, step * t.global_batch_size, t.global_batch_size,
                                      t.micro_batch_size, dp_rank, dp, seq))
        lr = current_lr(optimizer)
        result = train_step(wrapped, optimizer, mbs, seq, t.micro_batch_size, STEP_FUNCS[cfg.stage.objective])
        scheduler.step(1)
        step += 1
        window_steps += 1
        losses[step] = result.loss
        if step % t.log_interval == 0 or step == t.train_iters:
            elapsed = time.perf_counter() - window_start
            rates = throughput(cfg.model, seq, tokens_per_step * window_steps, elapsed, dist.get_world_size(), peak)
            sink.emit(step, {"loss": result.loss, "grad_norm": None if result.grad_norm is None
                             else float(result.grad_norm), "lr": lr, **rates, **memory_gib(),
                             "consumed_samples": step * t.global_batch_size, **post.step_metrics(cfg)})
            window_start, window_steps = time.perf_counter(), 0
        if t.eval_interval and valid_src is not None and step % t.eval_interval == 0:
            sink.emit(step, {"val_loss": evaluate(cfg, wrapped, valid_src, dp_rank, dp), **post.eval_metrics(cfg)})
        saved = bool(c.save_interval and step % c.save_interval == 0 and step < t.train_iters)
        if saved:
            save(step)
        if saved or (t.eval_interval and step % t.eval_interval == 0):
            window_start = time.perf_counter()  # rates measure training only
        if stop.requested_everywhere():
            log.warning("stop signal received: saving at step %d and exiting", step)
            if not saved:
                save(step)
            stopped = True
            break
    if not stopped:
        if step > state["step"]:  # not when resuming an already finished stage
            save(step)
        mark_finished()
    stop.uninstall()
    sink.close()
    return {"losses": losses, "stopped": stopped, "step": step}
