"""One stage of training, in two phases: `Trainer(...)` builds everything, `Trainer.train()` runs it.

Build: process groups, the model, the objective (the registry's class for `stage.objective`), megatron's
DDP and optimizer, the schedule, then resume from `checkpoint.dir` or initialize the stage's weights,
the sample sources, the objective's `prepare` (DPO's reference pass), the metrics sink and the stop signal.

Speed: `perf` is resolved once (`model/perf.py`) into the fusions and overlaps this machine grants; the
model, TE's userbuffers and megatron's DDP are built from that one decision. Micro-batches come from
`datasets/loader.StepBatches` (`data.num_workers` processes build them ahead of the step), and
`profiling.StepProfiler` traces the steps `profile.steps` names.

Run: each step reads its global batch, trains, and hands the step to the components, each of which
decides its own timing: the metrics sink logs every `train.log_interval` steps, the evaluator runs every
`train.eval_interval`, the code benchmarks (`bench.*`, handed in) every `bench.interval` and at the end,
the checkpointer saves every `checkpoint.save_interval` (in the background with
`checkpoint.async_save`, completed at a later step boundary). SIGTERM or SIGUSR1
(`preemption.StopSignal`) makes every rank stop after the same step, save, and return without the
FINISHED marker, so the Slurm script requeues the stage; a stage that reaches train_iters saves and
marks itself finished.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field

import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config import Config, ConfigError
from megatron_qwen.model import perf
from megatron_qwen.model.build import build_model
from megatron_qwen.model.lora import apply_lora
from megatron_qwen.platform import compute_dtype, init_distributed
from megatron_qwen.training import checkpoint as ckpt
from megatron_qwen.training.datasets.loader import StepBatches
from megatron_qwen.training.evaluation import Evaluator
from megatron_qwen.training.metrics import (
    MetricsSink,
    MetricsWindow,
    device_peak_tflops,
    memory_gib,
    throughput,
)
from megatron_qwen.training.objectives import PrepareContext, get_objective
from megatron_qwen.training.preemption import StopSignal, mark_finished
from megatron_qwen.training.profiling import StepProfiler, phase
from megatron_qwen.training.schedule import build_scheduler, current_lr
from megatron_qwen.training.step import LossSpikeRule, build_optimizer, params_in_sync, train_step, wrap_model
from megatron_qwen.training.watchdog import Watchdog

log = logging.getLogger("megatron_qwen.train")


@dataclass
class RunResult:
    losses: dict[int, float] = field(default_factory=dict)  # step -> mean loss of its global batch
    stopped: bool = False  # stopped by a signal (to be requeued), not finished
    step: int = 0


class Trainer:
    def __init__(self, cfg: Config, config_dict: dict, config_yaml: str, import_hf=None, benchmarks=None):
        t, c, seq = cfg.train, cfg.checkpoint, cfg.data.seq_length
        self.cfg, self.import_hf = cfg, import_hf
        # `benchmarks(chunks, step) -> {"eval/<benchmark>/<metric>": value}` (collective), built by
        # `megatron-qwen train` from bench.* (generation and execution live in layers above the trainer)
        self.benchmarks = benchmarks
        self.switches = perf.resolve(cfg.perf, cfg.model, cfg.parallel, cfg.data.packed_sequences)
        self.dp = init_distributed(cfg.parallel, cfg.model, seq, cfg.seed,
                                   te_rng_tracker=self.switches.cuda_graph != "none")
        self.dp_rank = parallel_state.get_data_parallel_rank()
        if dist.get_rank() == 0 and self.switches.refused and "*" not in self.switches.refused:  # GPU only
            log.info("perf switches refused: %s", self.switches.refused)
        self.objective = get_objective(cfg.stage.objective)(cfg)
        dtype = compute_dtype(cfg.train.dtype)
        if self.switches.tp_comm_overlap:
            perf.initialize_userbuffers(cfg.model, cfg.parallel, seq, t.micro_batch_size, dtype)
        self.chunks = build_model(cfg.model, cfg.parallel, seq, dtype, self.switches)
        latest = ckpt.find_latest(c.dir) if c.resume else None
        if latest is None or cfg.lora.enabled:  # a LoRA checkpoint holds adapters only: the base comes from init
            base = ckpt.initialize_weights(cfg, self.chunks, import_hf)
        if cfg.lora.enabled:
            apply_lora(self.chunks, cfg.lora, cfg.seed)
        self.wrapped = wrap_model(self.chunks, cfg.parallel, self.switches)
        self.optimizer = build_optimizer(self.wrapped, cfg.optim, cfg.parallel)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.train_iters)
        state = {"step": 0, "wandb_id": None}
        if latest is not None:
            log.info("resuming from %s", latest)
            state = ckpt.load(latest, self.chunks, self.optimizer, self.scheduler)
        self.start_step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.spike = (LossSpikeRule(t.loss_spike_margin, t.loss_spike_window, state.get("recent_losses"))
                      if t.loss_spike_margin > 0 else None)
        self.consecutive_skips = 0
        self.train_source, valid = self.objective.build_sources(t.train_iters * t.global_batch_size,
                                                                max(t.eval_iters, 1) * t.global_batch_size)
        self.objective.prepare(PrepareContext(self.wrapped, latest is not None, self._start_model),
                               self.train_source, valid)
        self.evaluator = Evaluator(cfg, self.objective, self.wrapped, valid, self.dp_rank, self.dp)
        self.sink = MetricsSink(cfg, config_dict, state.get("wandb_id") or cfg.logging.wandb_id)
        self.checkpointer = ckpt.Checkpointer(cfg, self.chunks, self.optimizer, self.scheduler, config_yaml)
        self.checkpointer.run_id = self.sink.shared_run_id()
        self.checkpointer.extra["skipped_steps"] = self.skipped_steps
        if cfg.lora.enabled:
            self._record_lora_base(state.get("lora"), base)
        self.peak = device_peak_tflops("fp8" if cfg.model.fp8_recipe else "bf16", cfg.logging.peak_tflops)

    def _record_lora_base(self, saved: dict | None, base) -> None:
        """Each adapter checkpoint records the base weights it applies to; a resume must use the same base."""
        record = {"base": os.path.abspath(base), "init_from": self.cfg.checkpoint.init_from, "init_path": self.cfg.checkpoint.init_path,
                  "rank": self.cfg.lora.rank, "alpha": self.cfg.lora.alpha,
                  "target_modules": list(self.cfg.lora.target_modules)}
        if saved is not None and (saved["base"], saved["rank"]) != (record["base"], record["rank"]):
            raise ConfigError(f"the adapters in {self.cfg.checkpoint.dir} were trained on {saved['base']} (rank "
                              f"{saved['rank']}); this run's base is {record['base']} (rank {record['rank']}): set "
                              "checkpoint.init_path to the same base or start a new checkpoint.dir")
        self.checkpointer.extra["lora"] = record

    def _start_model(self):
        """A frozen copy of the stage's start weights (for DPO's reference after a resume without its cache)."""
        cfg = self.cfg
        chunks = build_model(cfg.model, cfg.parallel, cfg.data.seq_length, compute_dtype(cfg.train.dtype),
                             self.switches)
        ckpt.initialize_weights(cfg, chunks, self.import_hf)
        return chunks

    def _benchmarks_due(self, step: int) -> bool:
        b = self.cfg.bench
        return self.benchmarks is not None and (step == self.cfg.train.train_iters
                                                or bool(b.interval and step % b.interval == 0))

    def _skipped(self, step: int, loss: float, reason: str) -> None:
        """Count a skipped step; too many in a row stop the run before anything is saved over `latest`."""
        self.skipped_steps += 1
        self.checkpointer.extra["skipped_steps"] = self.skipped_steps
        self.consecutive_skips += 1
        limit = self.cfg.train.max_consecutive_skips
        log.warning("step %d skipped: %s (loss %s); weights, optimizer and schedule unchanged "
                    "(%d skipped in a row, limit %d)", step, reason, loss, self.consecutive_skips, limit)
        if limit and self.consecutive_skips >= limit:
            raise RuntimeError(f"{self.consecutive_skips} consecutive steps (the last: {step}) were skipped, the last for "
                               f"{reason} (train.max_consecutive_skips={limit}); the last good checkpoint stays latest")

    def train(self) -> RunResult:
        """Train until train.train_iters or a stop signal (see the module doc)."""
        t, seq = self.cfg.train, self.cfg.data.seq_length
        result, step = RunResult(step=self.start_step), self.start_step
        window, stop = MetricsWindow(), StopSignal.install((signal.SIGTERM, signal.SIGUSR1))
        window_start, window_steps = time.perf_counter(), 0
        batches = StepBatches(self.train_source, self.cfg, self.dp_rank, self.dp, step)
        profiler = StepProfiler(self.cfg, dist.get_rank())
        watchdog = Watchdog(t.watchdog_seconds)  # a hang anywhere in a step ends the process (exit 3)
        while step < t.train_iters:
            lr = current_lr(self.optimizer)
            profiler.before(step + 1)
            with phase("data"):
                step_batches = batches.next(step)
            out = train_step(self.wrapped, self.optimizer, step_batches, seq, t.micro_batch_size,
                             self.objective.forward_step, self.objective.report_keys,
                             self.spike.accept if self.spike else None)
            step += 1
            profiler.after(step)
            self.checkpointer.poll()  # a background save whose writers all finished is completed now
            watchdog.beat()
            window_steps += 1
            result.losses[step] = out.loss
            if out.skipped:
                self._skipped(step, out.loss, out.reason)
            else:
                self.scheduler.step(1)
                self.consecutive_skips = 0
                if self.spike:
                    self.spike.record(out.loss)
                    self.checkpointer.extra["recent_losses"] = self.spike.recent
                window.add({k: v for k, v in out.totals.items() if k != "loss"})
            if step % t.log_interval == 0 or step == t.train_iters:
                rates = throughput(self.cfg.model, seq, t.global_batch_size * seq * window_steps,
                                   time.perf_counter() - window_start, dist.get_world_size(), self.peak)
                self.sink.emit(step, {"loss": out.loss, "grad_norm": None if out.grad_norm is None
                                      else float(out.grad_norm), "lr": lr, **rates, **memory_gib(),
                                      "consumed_samples": step * t.global_batch_size,
                                      "skipped_steps": self.skipped_steps, **window.pop()})
                window_start, window_steps = time.perf_counter(), 0
            # no save right after a skipped step: `latest` keeps naming weights that came from a good step
            evaluated, saved = self.evaluator.due(step), not out.skipped and self.checkpointer.due(step)
            benched = self._benchmarks_due(step)
            if evaluated or saved or benched:
                with params_in_sync(self.wrapped):  # overlapped parameter gathers land now
                    if evaluated:
                        self.sink.emit(step, self.evaluator.run())
                    if benched:
                        self.sink.emit(step, self.benchmarks(self.wrapped, step))
                        self.sink.plot_eval()
                    if saved:
                        self.checkpointer.save(step)
                window_start = time.perf_counter()  # rates measure training only
                watchdog.beat()
            if stop.requested_everywhere():
                log.warning("stop signal received: saving at step %d and exiting", step)
                with params_in_sync(self.wrapped):
                    self.checkpointer.save(step, wait=True)
                result.stopped = True
                break
        result.step = step
        self.checkpointer.close()
        watchdog.stop()
        profiler.close()
        batches.close()
        if not result.stopped:
            if step > self.start_step:  # not when resuming an already finished stage
                with params_in_sync(self.wrapped):
                    self.checkpointer.save(step, wait=True)
            mark_finished()
        stop.uninstall()
        self.sink.close()
        return result


def run(cfg: Config, config_dict: dict, config_yaml: str, import_hf=None, benchmarks=None) -> RunResult:
    """Build and train one stage."""
    return Trainer(cfg, config_dict, config_yaml, import_hf, benchmarks).train()
