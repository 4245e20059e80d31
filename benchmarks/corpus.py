#!/usr/bin/env python
"""Throughput per core of the whole corpus pipeline (`megatron-qwen corpus`) on the Python standard library,
with 1 and 2 workers, next to `preprocess --mode file` (tokenization alone) on the same files.

Why it exists: issue 16 asks how the datatrove pipeline (read, language ID, code rules, exact dedup,
MinHash signatures / buckets / clusters, near-dup filter, format + tokenize, write shards) scales with
workers. The corpus is one JSONL record per stdlib .py file, cut into --tasks files so every task has
input. Each configuration runs in a fresh output folder, in this process (the Local executor forks its
workers). Figures printed:
  corpus      wall time, documents/s, input MB/s and output tokens/s, and tokens/s per worker
  scaling     2-worker throughput / 1-worker throughput (ideal 2.0; target >= 1.5 on an idle 2-core machine),
              next to what two CPU-bound processes gain on this machine at the time (the ceiling)
  stages      seconds per datatrove stage (summed over its tasks) of the 1-worker run
  reference   `preprocess --mode file` (1 worker) tokens/s: the share of the pipeline's time spent beyond it

    .venv/bin/python benchmarks/corpus.py --tokenizer ../shared/fixtures/qwen2.5-coder-tokenizer
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCALING_TARGET = 1.5


def stdlib_records(limit: int) -> list[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        out.append({"content": text, "path": path.relative_to(root).as_posix(), "language": "python"})
        if len(out) == limit:
            break
    return out


def _spin(n: int) -> int:
    return sum(range(n))


def machine_scaling(n: int = 30_000_000) -> float:
    """How much faster two CPU-bound processes finish than one after the other, right now (2.0 on an idle
    machine with two free cores): the ceiling for the pipeline's 1 -> 2 worker scaling in this run."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    for _ in range(2):
        _spin(n)
    serial = time.perf_counter() - start
    with ctx.Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_spin, [n, n])
        parallel = time.perf_counter() - start
    return serial / parallel


def stage_seconds(out: Path) -> dict[str, float]:
    from megatron_qwen.corpus.steps import STAGES

    seconds = {}
    for stage in STAGES:
        total = 0.0
        for f in (out / "logs" / stage / "stats").glob("*.json"):
            total += sum(step["time_stats"]["total"] for step in json.loads(f.read_text()))
        if total:
            seconds[stage] = round(total, 2)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--max-files", type=int, default=1500, help="stdlib files in the corpus")
    p.add_argument("--tasks", type=int, default=8)
    args = p.parse_args()

    from megatron_qwen.config import ClusterConfig, CorpusConfig
    from megatron_qwen.corpus.pipeline import run_corpus
    from megatron_qwen.data.preprocess.cli import main as preprocess

    records = stdlib_records(args.max_files)
    nbytes = sum(len(r["content"].encode()) for r in records)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        for k in range(args.tasks):
            with open(tmp / "in" / f"part{k:03d}.jsonl", "w", encoding="utf-8") as f:
                for r in records[k::args.tasks]:
                    f.write(json.dumps(r) + "\n")
        print(f"corpus: {len(records)} stdlib files, {nbytes / 1e6:.1f} MB, {args.tasks} input files / tasks")
        results = {}
        for workers in (1, 2):
            cfg = CorpusConfig(input=[str(tmp / "in")], output=str(tmp / f"out{workers}"), tokenizer=args.tokenizer,
                               tasks=args.tasks, workers=workers)
            start = time.perf_counter()
            report = run_corpus(cfg, ClusterConfig())
            wall = time.perf_counter() - start
            results[workers] = (wall, report)
            tok_s = report["output_tokens"] / wall
            print(f"corpus workers={workers}: {wall:.1f} s, {report['input_documents'] / wall:.0f} docs/s, "
                  f"{nbytes / 1e6 / wall:.2f} MB/s, {tok_s / 1e6:.3f} M tok/s, "
                  f"{tok_s / workers / 1e6:.3f} M tok/s per worker; "
                  f"{report['output_documents']} of {report['input_documents']} documents kept")
        speedup = results[1][0] / results[2][0]
        ceiling = machine_scaling()
        print(f"scaling 1 -> 2 workers: {speedup:.2f}x (ideal 2.0, target >= {SCALING_TARGET}: "
              f"{'met' if speedup >= SCALING_TARGET else 'NOT met'}; ratio to target {speedup / SCALING_TARGET:.2f}); "
              f"this machine gives two CPU-bound processes {ceiling:.2f}x right now "
              f"(pipeline scaling / machine ceiling = {speedup / ceiling:.2f})")
        print("stages (1 worker, seconds summed over tasks):", json.dumps(stage_seconds(tmp / "out1")))
        ref_in = tmp / "ref.jsonl"
        with open(ref_in, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"text": r["content"]}) + "\n")
        start = time.perf_counter()
        preprocess(["--mode", "file", "--input", str(ref_in), "--output-prefix", str(tmp / "ref"), "--tokenizer",
                    args.tokenizer, "--no-progress"])
        ref_wall = time.perf_counter() - start
        ref_tokens = json.loads((tmp / "ref_report.json").read_text())["tokens"]
        print(f"reference preprocess --mode file (1 worker, all files): {ref_wall:.1f} s, "
              f"{ref_tokens / ref_wall / 1e6:.3f} M tok/s; the 1-worker pipeline takes "
              f"{results[1][0] / ref_wall:.1f}x its time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
