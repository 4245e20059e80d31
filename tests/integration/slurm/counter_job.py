"""A step counter that follows the trainer's requeue contract, to test the batch script's control flow.

Not a trainer: it "trains" by sleeping and appending `<restart> <step>` lines to steps.<rank>. It
resumes after the last step it recorded, stops cleanly (status 0, no FINISHED) on USR1, writes FINISHED
through `mark_finished()` when it reaches the end, and exits with `--fail-with` when told to: before its
first step, or at step `--fail-at` of its first `--fail-times` runs (a crash that a restart cures).
Usage: python counter_job.py DIR STEPS [--fail-with CODE [--fail-at STEP --fail-times N]]
"""

import argparse
import os
import sys
import time
from pathlib import Path

from megatron_qwen.training.preemption import StopSignal, mark_finished


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--fail-with", type=int, default=0)
    parser.add_argument("--fail-at", type=int, default=None)
    parser.add_argument("--fail-times", type=int, default=0)
    args = parser.parse_args()
    rank = int(os.environ["SLURM_PROCID"])
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    stop = StopSignal.install()
    record = args.dir / f"steps.{rank}"
    lines = record.read_text().split("\n") if record.exists() else []
    done = [int(line.split()[1]) for line in lines if line.strip()]
    start = done[-1] + 1 if done else 0
    runs_file = args.dir / f"runs.{rank}"
    runs = int(runs_file.read_text()) + 1 if runs_file.exists() else 1
    runs_file.write_text(str(runs))
    if args.fail_with and args.fail_at is None:
        print(f"rank {rank}: failing with {args.fail_with}", flush=True)
        return args.fail_with
    for step in range(start, args.steps):
        if args.fail_at == step and runs <= args.fail_times:
            print(f"rank {rank}: crashing at step {step} (run {runs})", flush=True)
            return args.fail_with
        time.sleep(0.25)
        with record.open("a") as f:
            f.write(f"{restart} {step}\n")
        print(f"rank {rank} restart {restart} step {step}", flush=True)
        if stop.requested:
            print(f"rank {rank}: USR1 after step {step}, stopping", flush=True)
            return 0
    mark_finished(rank=rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
