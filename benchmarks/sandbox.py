#!/usr/bin/env python
"""Sandbox throughput on the 164 canonical HumanEval programs, and what the isolation costs.

Why it exists: scoring a benchmark is thousands of short programs, so the per-program overhead of the
sandbox (bubblewrap's namespaces and mounts, prlimit, the shell wrapper) decides how long an evaluation
takes. Printed, in one run:
  programs/s   164 canonical HumanEval programs (all must pass) with 1 and 2 workers, with bubblewrap
               and with isolation="none" (rlimits only)
  overhead     bubblewrap minus none, per program, at 1 worker (milliseconds and ratio)
  hello        median wall time of a trivial program per language (start-up + compile for Java/C++)

    .venv/bin/python benchmarks/sandbox.py [--workers 1,2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_qwen.codebench.humaneval import humaneval_tasks  # noqa: E402
from megatron_qwen.sandbox import Program, Sandbox, SandboxConfig, Status, run_many, toolchain_problem  # noqa: E402

HELLO = {
    "python": 'print("hello")\n',
    "javascript": 'console.log("hello")\n',
    "java": 'class Main { public static void main(String[] a) { System.out.println("hello"); } }\n',
    "cpp": '#include <cstdio>\nint main() { std::puts("hello"); }\n',
}


def humaneval_programs() -> list[Program]:
    """The canonical solution of each HumanEval problem with its tests."""
    return [Program(t.program(t.reference or ""), "python") for t in humaneval_tasks()]


def timed_run(sandbox: Sandbox, programs: list[Program], workers: int, repeat: int) -> float:
    """Best wall time of `repeat` runs of all programs; exits if any program does not pass."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        results = run_many(sandbox, programs, workers=workers)
        best = min(best, time.perf_counter() - start)
        failed = [r for r in results if r.status is not Status.PASSED]
        if failed:
            sys.exit(f"error: {len(failed)} canonical programs did not pass, e.g. {failed[0]}")
    return best


def hello_latency(sandbox: Sandbox, repeat: int = 5) -> dict[str, float | None]:
    """Median wall seconds of a trivial program per language (None where the toolchain is missing)."""
    out: dict[str, float | None] = {}
    for language, code in HELLO.items():
        if toolchain_problem(language):
            out[language] = None
            continue
        out[language] = statistics.median(sandbox.run(code, language).wall_s for _ in range(repeat))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the best is reported")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    logging.basicConfig(level=logging.ERROR)  # the isolation="none" warning is expected here
    programs = humaneval_programs()
    sandboxes = {iso: Sandbox(SandboxConfig(isolation=iso)) for iso in ("bwrap", "none")}
    run_many(sandboxes["bwrap"], programs[:8], workers=2)  # warm the page cache
    seconds: dict[tuple[str, int], float] = {}
    print(f"{len(programs)} canonical HumanEval programs")
    print(f"{'isolation':<10} {'workers':>7} {'seconds':>8} {'programs/s':>11}")
    for iso, sandbox in sandboxes.items():
        for w in workers:
            seconds[iso, w] = timed_run(sandbox, programs, w, args.repeat)
            print(f"{iso:<10} {w:>7} {seconds[iso, w]:>8.2f} {len(programs) / seconds[iso, w]:>11.1f}")
    w0 = workers[0]
    per_bwrap = seconds["bwrap", w0] / len(programs) * 1000
    per_none = seconds["none", w0] / len(programs) * 1000
    print(f"overhead of bubblewrap at {w0} worker(s): {per_bwrap - per_none:+.1f} ms/program "
          f"({per_bwrap:.1f} vs {per_none:.1f} ms, x{per_bwrap / per_none:.2f})")  # fmt: skip
    latency = hello_latency(sandboxes["bwrap"])
    print("hello-world wall time with bubblewrap (median of 5): " + ", ".join(
        f"{lang} {'n/a' if s is None else f'{s * 1000:.0f} ms'}" for lang, s in latency.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
