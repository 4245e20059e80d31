"""Where a process is in the job: rank, world size, local rank and the rendezvous address.

Read from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) when present,
otherwise from Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host of SLURM_JOB_NODELIST,
a port derived from SLURM_JOB_ID), otherwise a single local process. `srun` starts one task per GPU and
the trainer needs no torchrun in between.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm" or "single"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: 'a[1,2],b' -> ['a[1,2]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_ranges(ranges: str, hostlist: str) -> list[str]:
    """'001-003,7' -> ['001', '002', '003', '7']; a range keeps the zero padding of its lower bound."""
    out = []
    for item in ranges.split(","):
        lo, sep, hi = item.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in hostlist {hostlist!r}")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in hostlist {hostlist!r}")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def _expand_one(pattern: str, hostlist: str) -> list[str]:
    """One host pattern, possibly with several bracket groups: 'r[1-2]n[01-02]' -> r1n01, r1n02, r2n01, ..."""
    start = pattern.find("[")
    if start < 0:
        return [pattern]
    end = pattern.find("]", start)
    head, ranges, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    return [head + value + rest for value in _expand_ranges(ranges, hostlist) for rest in _expand_one(tail, hostlist)]


def expand_hostlist(nodelist: str) -> list[str]:
    """All hosts of a Slurm hostlist, in order: 'gpu[003-004,009],login1' -> gpu003, gpu004, gpu009, login1.

    The same expansion as `scontrol show hostnames`, without needing Slurm's client on the path.
    """
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("SLURM_JOB_NODELIST is empty")
    return [host for pattern in _split_top_level(nodelist) for host in _expand_one(pattern, nodelist)]


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist (the rendezvous host): 'gpu[003-005,009],login1' -> 'gpu003'."""
    return expand_hostlist(nodelist)[0]


def _port_for_job(job_id: str) -> int:
    # A deterministic port every task of the job agrees on, away from the common service ports.
    return 20000 + int(job_id) % 20000


def read_dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job_id = env.get("SLURM_JOB_ID", "0")
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            master_port=int(env.get("MASTER_PORT") or _port_for_job(job_id)),
            source="slurm",
        )
    return DistEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", "29500")), "single")
