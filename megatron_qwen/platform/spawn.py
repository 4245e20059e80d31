"""Run a function on N local processes (CPU/gloo or one GPU each) and collect what each rank returns.

Used by tests and by tools that need a small parallel job without a launcher (e.g. `convert verify
--tp 2`). The rendezvous port is chosen free by the OS; results travel back through a spawn-context
queue, and a failure on any rank is re-raised here with that rank's traceback.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerError(RuntimeError):
    pass


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    try:
        # Pickled here, by value: tensors sent as-is would travel as shared-memory handles that break
        # when this process exits before the parent has read them.
        result = pickle.dumps(fn(*args))
        queue.put((rank, True, result))
    except BaseException:  # noqa: BLE001 - reported to the parent with the traceback
        queue.put((rank, False, traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        try:
            from megatron_qwen.platform import destroy_distributed

            destroy_distributed()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def run_workers(world_size: int, fn: Callable, *args: Any, timeout: float = 600.0) -> list[Any]:
    """fn(*args) on `world_size` processes with RANK/WORLD_SIZE/MASTER_* set; results by rank."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while len(results) < world_size and not errors:
        try:
            rank, ok, payload = queue.get(timeout=1.0)
        except queue_mod.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0) and i not in results]
            if dead:
                errors.append(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without a result")
            elif time.monotonic() > deadline:
                errors.append(f"timed out after {timeout:.0f} s waiting for ranks")
            continue
        if ok:
            results[rank] = pickle.loads(payload)
        else:
            errors.append(f"rank {rank} failed:\n{payload}")
    for p in procs:
        p.join(timeout=5 if errors else timeout)
        if p.is_alive():
            p.kill()
    if errors:
        raise WorkerError("\n".join(errors))
    return [results[r] for r in range(world_size)]
