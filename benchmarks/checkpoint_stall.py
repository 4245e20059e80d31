#!/usr/bin/env python
"""How long a checkpoint save stalls training: synchronous against asynchronous (`checkpoint.async_save`).

Why it exists: every save of a synchronous run stops all ranks for the whole write; with megatron-core's
async writer the step stalls only while the tensors are staged (and, at a later step, while the save is
completed: our manifest's checksums, the rename and `latest`). Same model, data and save steps in both runs;
one process on CPU (the write goes to local disk). Printed, in one run:
  step        median wall time of a step without a save
  blocked     time the training loop spends inside the checkpointer per save (sync: the whole save;
              async: staging + scheduling, and later the completion), mean per save after the first
  stall       extra wall time of the steps that carried a save (sync: the step after which it was written;
              async: that step plus the step that completed it), mean per save after the first (the first
              save of a run also builds megatron's save plan, in both modes)
  ratio       async stall / sync stall (goal: well below 1)
  checkpoint  size on disk of one checkpoint (model + Adam state)

    .venv/bin/python benchmarks/checkpoint_stall.py [--hidden 512 --layers 8 --steps 24 --interval 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_qwen.platform.spawn import run_workers  # noqa: E402


def _run(root: str, asynchronous: bool, hidden: int, layers: int, steps: int, interval: int) -> dict:
    from megatron_qwen.config import Config
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.training import trainer as trainer_mod

    cfg = Config()
    cfg.model = get_preset("tiny", hidden_size=hidden, ffn_hidden_size=hidden * 11 // 4, num_layers=layers,
                           num_attention_heads=8, num_query_groups=2, kv_channels=hidden // 8, vocab_size=32768)
    cfg.data.mock, cfg.data.seq_length = True, 32
    cfg.train.train_iters, cfg.train.log_interval, cfg.train.eval_interval = steps, 1000, 0
    cfg.train.micro_batch_size, cfg.train.global_batch_size = 1, 1
    cfg.checkpoint.dir, cfg.checkpoint.save_interval, cfg.checkpoint.keep_last = root, interval, 1
    cfg.checkpoint.async_save = asynchronous
    cfg.logging.metrics_file = str(Path(root) / "metrics.jsonl")
    ends: list[float] = []
    blocked: dict[int, float] = {}
    honest = trainer_mod.train_step
    checkpointer = trainer_mod.ckpt.Checkpointer

    def blocking(method):
        def timed_method(self, *a, **k):
            start = time.perf_counter()
            out = method(self, *a, **k)
            blocked[len(ends)] = blocked.get(len(ends), 0.0) + time.perf_counter() - start
            return out
        return timed_method
    checkpointer.save, checkpointer.poll = blocking(checkpointer.save), blocking(checkpointer.poll)

    def timed(*a, **k):
        out = honest(*a, **k)
        ends.append(time.perf_counter())
        return out
    trainer_mod.train_step = timed
    trainer_mod.Trainer(cfg, {}, "{}\n").train()
    # interval i = wall time from the end of step i to the end of step i+1: it holds step i's save, if any
    gaps = {i: ends[i] - ends[i - 1] for i in range(1, len(ends))}
    saves = list(range(interval, steps, interval))
    carried = set(saves) | ({s + 1 for s in saves} if asynchronous else set())
    plain = statistics.median(v for i, v in gaps.items() if i not in carried and i > 1)
    later = [s for s in saves[1:]]
    stall = sum(gaps[i] - plain for s in later for i in (s, s + 1) if i in carried and i in gaps) / len(later)
    held = sum(blocked.get(i, 0.0) for s in later for i in (s, s + 1)) / len(later)
    ckpt = max(Path(root).glob("iter_*"))
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    return {"step_s": plain, "stall_s": stall, "blocked_s": held, "bytes": size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--interval", type=int, default=4)
    args = p.parse_args()
    if args.steps // args.interval < 3:
        p.error("need at least 3 saves (--steps / --interval >= 3): the first one is not counted")
    results = {}
    for name, asynchronous in (("sync", False), ("async", True)):
        with tempfile.TemporaryDirectory() as root:
            (results[name],) = run_workers(1, _run, root, asynchronous, args.hidden, args.layers, args.steps,
                                           args.interval)
    gib = results["sync"]["bytes"] / 2**30
    print(f"checkpoint: {gib:.2f} GiB (hidden {args.hidden}, {args.layers} layers, fp32 weights + Adam state)")
    for name, r in results.items():
        print(f"{name:>5}: step {r['step_s'] * 1e3:8.1f} ms | blocked per save {r['blocked_s'] * 1e3:8.1f} ms | "
              f"stall per save {r['stall_s'] * 1e3:8.1f} ms")
    for key in ("blocked_s", "stall_s"):
        ratio = results["async"][key] / results["sync"][key]
        print(f"async / sync {key.removesuffix('_s')} = {ratio:.2f} (goal: well below 1)")
    print("(on a small CPU machine the background writer shares the cores with training, so the wall-clock "
          "stall shrinks less than the blocked time; on a GPU node the writer uses otherwise idle host cores)")


if __name__ == "__main__":
    main()
