"""Make AST-based FIM instruction conversations from source code, optionally mixed into an SFT JSONL.

Why it exists: the Qwen2.5-Coder SFT mix holds a small share of AST-FIM samples. This tool sets that
share exactly: with `--sft-input chat.jsonl --share 0.05` it writes the SFT records unchanged, in order,
with round(0.05 / 0.95 x N) AST-FIM conversations inserted at seeded random positions, so 5% of the
output records are AST-FIM. The result goes through `megatron-qwen preprocess --mode sft` like any chat
data (rendering, loss mask, decontamination, length fitting). Without `--sft-input` it writes only the
AST-FIM records (`--num-samples` caps them). To blend as a separate dataset instead, use `--mode sft-fim`.

Code input: JSONL records `{"text": ..., "path": ... | "lang": ...}` (`--input`) or source trees
(`--input-dir`, files with a known extension, in a seeded random order). Unparseable files are skipped
and counted in the report (printed, and written to `{output}.report.json`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from megatron_qwen.data.formats.ast_fim import (
    DEFAULT_WEIGHTS,
    EXTENSIONS,
    SpanConfig,
    conversation_records,
    parse_weights,
)
from megatron_qwen.platform.files import write_atomic
from megatron_qwen.platform.jsonl import JsonlError, iter_jsonl


def read_jsonl(paths: list[str], counters: Counter) -> Iterator[dict]:
    """The records of the JSONL inputs; a bad line is counted by kind, warned about and skipped."""
    def skip(err: JsonlError) -> None:
        counters[f"skipped:{err.kind}"] += 1
        print(f"warning: {err}, skipped", file=sys.stderr)

    for path in paths:
        for _, record in iter_jsonl(path, on_bad=skip):
            yield record


def read_trees(roots: list[str], seed: int, counters: Counter) -> Iterator[dict]:
    files = sorted(p for root in roots for p in Path(root).rglob("*")
                   if p.is_file() and p.suffix.lower() in EXTENSIONS)
    random.Random(seed).shuffle(files)
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            counters["skipped:non-UTF-8 file"] += 1
            continue
        yield {"text": text, "path": path.as_posix()}


def size_limited(records: Iterator[dict], max_bytes: int, counters: Counter) -> Iterator[dict]:
    for record in records:
        text = record.get("text")
        if isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            counters["skipped:file larger than --max-file-bytes"] += 1
            continue
        yield record


def count_records(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def mixed_lines(sft_path: str, fim: list[dict], seed: int) -> Iterator[str]:
    """SFT lines in order, with the FIM records at seeded random positions of the combined sequence."""
    with open(sft_path, "rb") as f:
        sft_lines = (line.decode("utf-8").rstrip("\r\n") + "\n" for line in f if line.strip())
        total = count_records(sft_path) + len(fim)
        slots = set(random.Random(seed).sample(range(total), len(fim)))
        pending = iter(fim)
        for position in range(total):
            yield json.dumps(next(pending), ensure_ascii=False) + "\n" if position in slots else next(sft_lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="JSONL code records {text, path|lang}")
    src.add_argument("--input-dir", nargs="+", help="source trees (Python, Java, JavaScript, C++ files)")
    p.add_argument("--output", required=True, help="output JSONL")
    p.add_argument("--sft-input", help="SFT JSONL to mix the samples into (with --share)")
    p.add_argument("--share", type=float, help="share of AST-FIM records in the mixed output, in (0, 1)")
    p.add_argument("--num-samples", type=int, help="without --sft-input: at most this many samples")
    p.add_argument("--per-file", type=int, default=1, help="samples per source file (distinct nodes)")
    p.add_argument("--weights", default=",".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items()))
    p.add_argument("--min-bytes", type=int, default=8)
    p.add_argument("--max-bytes", type=int, default=4096)
    p.add_argument("--max-file-bytes", type=int, default=100_000, help="skip larger source files")
    p.add_argument("--lang", help="language of records with neither 'lang' nor a known 'path' extension")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-progress", action="store_true")
    return p


def run(argv: list[str] | None = None) -> dict:
    """Parse the flags, write the output and its report; returns the report."""
    o = build_parser().parse_args(argv)
    if (o.sft_input is None) != (o.share is None):
        raise SystemExit("error: --sft-input and --share go together")
    if o.share is not None and not 0.0 < o.share < 1.0:
        raise SystemExit(f"error: --share must be in (0, 1), got {o.share}")
    config = SpanConfig(parse_weights(o.weights), o.min_bytes, o.max_bytes)
    counters: Counter = Counter()
    target = None
    if o.sft_input:
        n_sft = count_records(o.sft_input)
        target = round(o.share / (1 - o.share) * n_sft)
    elif o.num_samples is not None:
        target = o.num_samples
    code = read_jsonl(o.input, counters) if o.input else read_trees(o.input_dir, o.seed, counters)
    records = conversation_records(size_limited(code, o.max_file_bytes, counters), o.seed, config, o.per_file,
                                   o.lang, counters=counters)
    fim = list(tqdm(islice(records, target), total=target, desc="ast-fim", unit="sample", disable=o.no_progress,
                    file=sys.stderr))
    if o.sft_input:
        write_atomic(o.output, mixed_lines(o.sft_input, fim, o.seed))
    else:
        write_atomic(o.output, (json.dumps(r, ensure_ascii=False) + "\n" for r in fim))
    report = {"output": o.output, "samples": len(fim), "target": target, "counters": dict(sorted(counters.items()))}
    if o.sft_input:
        report.update(sft_records=n_sft, share=len(fim) / (n_sft + len(fim)) if n_sft + len(fim) else 0.0)
        if len(fim) < target:
            print(f"warning: only {len(fim)} AST-FIM samples for a target of {target}: add code input",
                  file=sys.stderr)
    Path(f"{o.output}.report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2), file=sys.stderr)
    return report



def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0
