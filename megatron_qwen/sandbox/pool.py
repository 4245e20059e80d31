"""Run many programs with at most N sandboxes at a time; results come back in input order.

Threads, not processes: each worker only waits on a child process (select/wait4 release the GIL), so a
thread pool gives real parallelism with no pickling, and the bound on threads is the bound on
concurrently running sandboxes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from megatron_qwen.sandbox.limits import Limits
from megatron_qwen.sandbox.result import RunResult
from megatron_qwen.sandbox.runner import Sandbox


@dataclass(frozen=True)
class Program:
    """One program to run: source, language, and optionally its own limits and standard input."""

    code: str
    language: str
    limits: Limits | None = None
    stdin: str | None = None


def default_workers() -> int:
    """The CPUs this process may use (the affinity mask, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def run_many(
    sandbox: Sandbox,
    programs: Sequence[Program],
    *,
    workers: int | None = None,
    progress: bool = False,
    description: str = "sandbox",
) -> list[RunResult]:
    """Results[i] is the result of programs[i]. `progress` shows a tqdm bar over completed runs."""
    workers = workers or default_workers()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[RunResult | None] = [None] * len(programs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(programs), desc=description, unit="prog")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        futures = {
            pool.submit(sandbox.run, p.code, p.language, limits=p.limits, stdin=p.stdin): i
            for i, p in enumerate(programs)
        }
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return [r for r in results if r is not None]
