"""Does the training step still wait for the data? The tiny model on CPU, with an artificially slow dataset.

    .venv/bin/python benchmarks/data_loading.py [--workers 4] [--sample-ms 10] [--steps 12]

One process (gloo) trains the tiny model through the trainer's own pieces (`StepBatches`, `train_step`)
on the learnable mock, each sample delayed by --sample-ms (a stand-in for reading and packing from a slow
file system: it waits, it does not compute). It times the steps with data.num_workers=0 (the training
thread builds every micro-batch) and with --workers worker processes, checks the losses are identical,
and prints the time per step of each and their ratio. The first two steps (worker start, warm-up) are
not timed.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MASTER_PORT", "29517")


class SlowSource:
    """A source whose every sample takes `delay` seconds to read."""

    def __init__(self, source, delay: float):
        self.source, self.delay = source, delay

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        time.sleep(self.delay)
        return self.source[index]


def measure(cfg, chunks, optimizer, source, workers: int, steps: int, warmup: int = 2) -> tuple[float, list[float]]:
    """(seconds per timed step, losses) of `steps` steps with `workers` data workers."""
    from megatron_qwen.training.datasets.loader import StepBatches
    from megatron_qwen.training.step import train_step

    cfg.data.num_workers = workers
    batches = StepBatches(source, cfg, 0, 1, 0)
    losses, start = [], 0.0
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        out = train_step(chunks, optimizer, batches.next(step), cfg.data.seq_length, cfg.train.micro_batch_size)
        losses.append(out.loss)
    elapsed = time.perf_counter() - start
    batches.close()
    return elapsed / (steps - warmup), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sample-ms", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()

    import copy

    import torch

    from megatron_qwen.config import Config
    from megatron_qwen.model.build import build_model
    from megatron_qwen.platform import destroy_distributed, init_distributed
    from megatron_qwen.training.datasets.pretrain import LearnableMock
    from megatron_qwen.training.step import build_optimizer, wrap_model

    torch.set_num_threads(1)
    cfg = Config()
    cfg.data.seq_length, cfg.train.micro_batch_size, cfg.train.global_batch_size = 64, 2, 8
    cfg.train.train_iters = args.steps
    init_distributed(cfg.parallel, cfg.model, cfg.data.seq_length, cfg.seed)
    source = SlowSource(LearnableMock(cfg.model.vocab_size, cfg.data.seq_length, args.steps * 8), args.sample_ms / 1e3)
    results = {}
    for workers in (0, args.workers):
        torch.manual_seed(cfg.seed)
        chunks = wrap_model(build_model(cfg.model, cfg.parallel, cfg.data.seq_length), cfg.parallel)
        optimizer = build_optimizer(chunks, cfg.optim, cfg.parallel)
        results[workers] = measure(copy.deepcopy(cfg), chunks, optimizer, source, workers, args.steps)
    destroy_distributed()
    (inline, inline_losses), (ahead, ahead_losses) = results[0], results[args.workers]
    data_ms = args.sample_ms * cfg.train.global_batch_size
    print(f"data per step: {cfg.train.global_batch_size} samples x {args.sample_ms:g} ms = {data_ms:g} ms")
    print(f"step time, 0 workers: {inline * 1e3:.1f} ms")
    print(f"step time, {args.workers} workers: {ahead * 1e3:.1f} ms")
    print(f"ratio (0 workers / {args.workers} workers): {inline / ahead:.2f}x")
    print(f"losses identical: {inline_losses == ahead_losses}")


if __name__ == "__main__":
    main()
