"""`python faults.py -m megatron_qwen train ...`: the real trainer with one fault planted, for fault-injection tests.

The fault comes from the environment, so the same wrapper works under the local launcher and as
`cluster.python` in a Slurm job (whose requeued runs see the same environment):

  FAULT=kill_at_step:N      SIGKILL this process as step N starts (the other ranks are then inside the
                            step's collectives, waiting for it)
  FAULT=crash_at_step:N     raise at step N (a crash without a signal: the trainer exits with status 1)
  FAULT=kill_after_write:K  SIGKILL this process in the K-th synchronous save, after its shards are written
                            and before the save is complete (the other ranks wait for it there)
  FAULT=slow_write:K:S      the background writer of the K-th asynchronous save first creates FAULT_MARK,
                            then sleeps S seconds (time for a test to kill the job mid-save)
  FAULT_RANK=R              strike only rank R (default: every rank)
  FAULT_ONCE=PATH           strike only while PATH does not exist, and create it when striking (a fault that
                            a restart cures)

Steps and saves are counted from the start of this process.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from pathlib import Path


def _strike() -> bool:
    once = os.environ.get("FAULT_ONCE")
    if once:
        if Path(once).exists():
            return False
        Path(once).write_text("struck\n")
    return True


def plant(fault: str) -> None:
    name, *args = fault.split(":")
    n = int(args[0])
    calls = {"n": 0}
    if name in ("kill_at_step", "crash_at_step"):
        from megatron_qwen.training import trainer

        honest = trainer.train_step

        def train_step(*a, **k):
            calls["n"] += 1
            if calls["n"] == n and _strike():
                print(f"FAULT {fault}: striking rank {os.environ.get('RANK', os.environ.get('SLURM_PROCID'))}",
                      flush=True)
                if name == "kill_at_step":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"planted crash at step {n}")
            return honest(*a, **k)
        trainer.train_step = train_step
    elif name == "kill_after_write":
        from megatron.core import dist_checkpointing

        honest = dist_checkpointing.save

        def save(*a, **k):
            out = honest(*a, **k)
            calls["n"] += 1
            if calls["n"] == n and not k.get("async_sharded_save") and _strike():
                print(f"FAULT {fault}: killed after writing its shards", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        dist_checkpointing.save = save
    elif name == "slow_write":
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        seconds, mark = float(args[1]), os.environ["FAULT_MARK"]
        honest = AsyncCallsQueue.schedule_async_request

        def schedule(self, request):
            calls["n"] += 1
            if calls["n"] == n and _strike():
                write = request.async_fn

                def slow(*a, **k):  # runs in the forked writer process
                    Path(mark).write_text(f"{os.getpid()}\n")
                    time.sleep(seconds)
                    return write(*a, **k)
                request = request._replace(async_fn=slow)
            return honest(self, request)
        AsyncCallsQueue.schedule_async_request = schedule
    else:
        raise SystemExit(f"faults.py: unknown FAULT {fault!r}")


def main() -> None:
    fault, target = os.environ.get("FAULT"), os.environ.get("FAULT_RANK")
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    if fault and (target is None or target == rank):
        plant(fault)
    if sys.argv[1:3] != ["-m", "megatron_qwen"]:
        raise SystemExit("usage: faults.py -m megatron_qwen COMMAND ...")
    sys.argv = ["megatron_qwen", *sys.argv[3:]]
    runpy.run_module("megatron_qwen", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
