#!/usr/bin/env python
"""Verification throughput of `megatron-qwen synth`: verified samples per minute with 1 and 2 sandbox workers.

Why it exists: every synthesized answer is parsed, checked for self-containment and run with its unit
tests in the sandbox; on a small machine that, not the model, can bound how fast data is made. The
samples are answer + tests pairs in the four languages, about half correct and half wrong (a wrong
answer costs the same run as a right one), in the proportions python 4 : javascript 2 : cpp 2 : java 1.
No infinite loops: a timeout costs its full limit and would measure the limit, not the verifier.
Printed, in one run: samples/min per worker count, the per-language share of the time (1 worker), the
static checks alone (parse + self-containment, no sandbox), and the speed-up of 2 workers over 1
against the ideal 2.0.

    .venv/bin/python benchmarks/synth_verify.py [--workers 1,2] [--copies 2] [--isolation bwrap|none]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_qwen.sandbox import Limits, Sandbox, SandboxConfig, toolchain_problem  # noqa: E402
from megatron_qwen.synth.verify import Check, Verifier, static_check  # noqa: E402

TASKS = {
    "python": (["def f(xs):\n    return sorted(set(xs))\n", "def f(xs):\n    return sorted(xs)\n",
                "def f(xs):\n    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n"
                "    return sorted(out)\n", "def f(xs):\n    return list(set(xs))[::-1]\n"],
               "assert f([3, 1, 3, 2]) == [1, 2, 3]\nassert f([]) == []\nassert f([5, 5]) == [5]\n"),
    "javascript": (["function f(xs) { return [...new Set(xs)].sort((a, b) => a - b); }\n",
                    "function f(xs) { return xs.sort(); }\n"],
                   "const assert = require('assert');\nassert.deepStrictEqual(f([3, 1, 3, 2]), [1, 2, 3]);\n"
                   "assert.deepStrictEqual(f([10, 9]), [9, 10]);\n"),
    "cpp": (["#include <set>\n#include <vector>\nstd::vector<int> f(std::vector<int> xs) {\n"
             "  std::set<int> s(xs.begin(), xs.end());\n  return std::vector<int>(s.begin(), s.end());\n}\n",
             "#include <vector>\nstd::vector<int> f(std::vector<int> xs) { return xs; }\n"],
            "#include <cassert>\nint main() {\n  assert((f({3, 1, 3, 2}) == std::vector<int>{1, 2, 3}));\n"
            "  return 0;\n}\n"),
    "java": (["import java.util.*;\nclass Solution {\n  static List<Integer> f(List<Integer> xs) {\n"
              "    return new ArrayList<>(new TreeSet<>(xs));\n  }\n}\n"],
             "import java.util.*;\npublic class Main {\n  public static void main(String[] a) {\n"
             "    if (!Solution.f(List.of(3, 1, 3, 2)).equals(List.of(1, 2, 3))) throw new AssertionError();\n"
             "  }\n}\n"),
}


def samples(copies: int) -> list[Check]:
    return [Check(answer, lang, tests) for _ in range(copies) for lang, (answers, tests) in TASKS.items()
            for answer in answers]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--copies", type=int, default=2, help="repeat the 9-sample set this many times")
    p.add_argument("--isolation", choices=("bwrap", "none"), default="bwrap")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    missing = {lang: toolchain_problem(lang) for lang in TASKS if toolchain_problem(lang)}
    if missing:
        print(f"toolchains missing: {missing}")
        return 1
    checks = samples(args.copies)
    sandbox = Sandbox(SandboxConfig(isolation=args.isolation, limits=Limits(timeout_s=10.0, memory_mb=512)))
    t0 = time.perf_counter()
    for c in checks:
        assert static_check(c) is None
    static_s = time.perf_counter() - t0
    print(f"{len(checks)} samples ({dict(Counter(c.language for c in checks))}), isolation={args.isolation}")
    print(f"static checks alone: {len(checks) / static_s * 60:,.0f} samples/min ({static_s / len(checks) * 1e3:.2f} ms each)")
    rates = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        Verifier(sandbox, workers=workers).verify(checks[:4])  # warm the toolchains' file cache
        t0 = time.perf_counter()
        verdicts = Verifier(sandbox, workers=workers).verify(checks)
        elapsed = time.perf_counter() - t0
        rates[workers] = len(checks) / elapsed * 60
        outcomes = Counter(v.outcome for v in verdicts)
        print(f"workers={workers}: {rates[workers]:6.1f} verified samples/min  ({elapsed:.1f} s; {dict(outcomes)})")
        if workers == 1:
            by_lang = Counter()
            for c, v in zip(checks, verdicts):
                by_lang[c.language] += v.wall_s
            total = sum(by_lang.values())
            print("  sandbox time by language: " + ", ".join(f"{k} {v / total:.0%} ({v / sum(c.language == k for c in checks):.2f} s/sample)"
                                                      for k, v in by_lang.items()))
    if 1 in rates and 2 in rates:
        print(f"speed-up 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x (ideal 2.00x on 2 free cores; "
              f"ratio to ideal {rates[2] / rates[1] / 2:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
