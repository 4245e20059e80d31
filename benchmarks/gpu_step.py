"""The GPU check: step time, tokens/s, TFLOP/s per GPU and MFU of one GPU for the 0.5B and 1.5B presets.

    python benchmarks/gpu_step.py [--presets qwen2.5-coder-0.5b qwen2.5-coder-1.5b] [--seq 2048]
                                  [--micro-batch 2] [--micro-batches 4] [--steps 12] [--json out.json]

For each preset it trains in bf16 with the local spec, with the Transformer Engine spec when TE is
installed, and with TE in FP8 (tensorwise scaling) when the GPU has FP8 tensor cores (compute capability
8.9 or newer), each in a fresh process (one GPU, world size 1), with every `perf` switch this machine
grants (model/perf.py; the refused ones are printed). Batches are the learnable mock through the trainer's
own `StepBatches` and `train_step`. The first 3 steps are warm-up; the others are timed between CUDA
synchronizations. TFLOP/s and MFU use training/metrics.py's formula (model FLOPs, 3 x forward) and its
table of peaks (bf16 peak for bf16 runs, FP8 peak for FP8 runs). On a machine without CUDA it says so and
exits with status 0, having measured nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

WARMUP = 3


def variants() -> list[tuple[str, str | None]]:
    """(transformer_impl, fp8_recipe) pairs this machine can run."""
    import torch

    out = [("local", None)]
    if importlib.util.find_spec("transformer_engine") is not None:
        out.append(("transformer_engine", None))
        if torch.cuda.get_device_capability() >= (8, 9):
            out.append(("transformer_engine", "tensorwise"))
    return out


def one(preset: str, impl: str, fp8: str | None, seq: int, mbs: int, n_micro: int, steps: int) -> dict:
    """Train `steps` steps of one variant in this process; its measurements."""
    import torch

    from megatron_qwen.config import Config
    from megatron_qwen.model import perf
    from megatron_qwen.model.build import build_model
    from megatron_qwen.model.presets import get_preset
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.datasets.loader import StepBatches
    from megatron_qwen.training.datasets.pretrain import LearnableMock
    from megatron_qwen.training.metrics import device_peak_tflops, memory_gib, throughput
    from megatron_qwen.training.step import build_optimizer, train_step, wrap_model

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # CPU: a smoke run only
    cfg = Config()
    cfg.model = get_preset(preset, transformer_impl=impl, fp8_recipe=fp8)
    cfg.data.seq_length, cfg.data.num_workers = seq, 2
    cfg.train.micro_batch_size, cfg.train.global_batch_size, cfg.train.train_iters = mbs, mbs * n_micro, steps
    switches = perf.resolve(cfg.perf, cfg.model, cfg.parallel)
    init_distributed(cfg.parallel, cfg.model, seq, cfg.seed)
    chunks = wrap_model(build_model(cfg.model, cfg.parallel, seq, torch.bfloat16, switches), cfg.parallel, switches)
    optimizer = build_optimizer(chunks, cfg.optim, cfg.parallel)
    source = LearnableMock(cfg.model.vocab_size, seq, steps * cfg.train.global_batch_size)
    batches = StepBatches(source, cfg, 0, 1, 0)
    losses, start = [], 0.0
    for step in range(steps):
        if step == WARMUP:
            sync()
            start = time.perf_counter()
        out = train_step(chunks, optimizer, batches.next(step), seq, mbs)
        losses.append(out.loss)
    sync()
    seconds = time.perf_counter() - start
    batches.close()
    timed = steps - WARMUP
    rates = throughput(cfg.model, seq, timed * cfg.train.global_batch_size * seq, seconds, 1,
                       device_peak_tflops("fp8" if fp8 else "bf16"))
    return {"preset": preset, "impl": impl, "precision": fp8 or "bf16", "seq": seq, "micro_batch": mbs,
            "micro_batches": n_micro, "step_s": seconds / timed, **rates, "first_loss": losses[0],
            "last_loss": losses[-1], "peak_mem_gib": memory_gib()["mem_gib"],
            "refused": switches.refused,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", nargs=3, metavar=("PRESET", "IMPL", "FP8"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.one:  # one variant in this process (the parent starts one per variant)
        preset, impl, fp8 = args.one
        result = one(preset, impl, None if fp8 == "none" else fp8, args.seq, args.micro_batch, args.micro_batches,
                     args.steps)
        print("RESULT " + json.dumps(result))
        return 0
    if not torch.cuda.is_available():
        print("gpu_step: no CUDA device here (torch.cuda.is_available() is False); nothing was measured. "
              "Run it on a GPU node with the CUDA build of torch.")
        return 0
    results = []
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    for preset in args.presets:
        for impl, fp8 in variants():
            cmd = [sys.executable, __file__, "--one", preset, impl, fp8 or "none", "--seq", str(args.seq),
                   "--micro-batch", str(args.micro_batch), "--micro-batches", str(args.micro_batches),
                   "--steps", str(args.steps)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{preset} {impl} {fp8 or 'bf16'}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
                results.append({"preset": preset, "impl": impl, "precision": fp8 or "bf16", "error": proc.returncode})
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            results.append(r)
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (peak unknown: logging.peak_tflops)"
            print(f"{preset:20s} {impl:18s} {r['precision']:10s} step {r['step_s'] * 1e3:8.1f} ms  "
                  f"{r['tokens_per_s']:10.0f} tok/s  {r['tflops_per_device']:7.1f} TFLOP/s  MFU {mfu}  "
                  f"mem {r['peak_mem_gib']:.1f} GiB  loss {r['first_loss']:.3f}->{r['last_loss']:.3f}")
            if r["refused"]:
                print(f"    refused: {r['refused']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
