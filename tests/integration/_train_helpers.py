"""Start `megatron-qwen train` on N local ranks (RANK/WORLD_SIZE/MASTER_* env, free port), as torchrun would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAULTS = Path(__file__).with_name("faults.py")  # the trainer with a planted fault (FAULT=... in extra_env)


def start(world: int, overrides: list[str], cwd: Path, extra_env: dict | None = None) -> list[subprocess.Popen]:
    port = free_port()
    wrapper = [str(FAULTS)] if extra_env and "FAULT" in extra_env else []
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WANDB_SILENT="true",
                   OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(extra_env or {}))
        log = cwd / f"rank{rank}.{port}.out"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, *wrapper, "-m", "megatron_qwen", "train", *overrides], cwd=cwd,
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        proc.log_path = log
        procs.append(proc)
    return procs


def wait(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    for p in procs:
        p.wait(timeout=max(deadline - time.time(), 1))
    codes = [p.returncode for p in procs]
    if any(codes):
        raise AssertionError(f"ranks exited with {codes}\n{all_output(procs)}")


def all_output(procs) -> str:
    return "\n".join(p.log_path.read_text()[-4000:] for p in procs)


def train(world: int, overrides: list[str], cwd: Path, timeout: float = 240) -> str:
    procs = start(world, overrides, cwd)
    wait(procs, timeout)
    return all_output(procs)


def metrics(path: Path) -> dict[int, dict]:
    """Last record per step of a metrics.jsonl (a resumed run appends its steps again)."""
    out: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec
    return out


def tiny(ckpt: Path, *extra: str) -> list[str]:
    return ["experiment=tiny_cpu", f"checkpoint.dir={ckpt}", "train.eval_interval=0", *extra]


def wandb_history(run_file: Path) -> list[dict]:
    """The `history` records of a W&B `.wandb` file (LevelDB-log framing: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file}: not a W&B run file"
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            if rec.WhichOneof("record_type") == "history":
                out.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in rec.history.item})
    return out
