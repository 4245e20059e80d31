"""Command line of `megatron-qwen preprocess`: Megatron-LM-style flags plus each registered mode's own.

Why it exists: the flags are assembled from the mode registry (each mode may add an argument group), and
cross-flag rules are checked in one place with errors that name the flags.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_qwen.data.preprocess.modes.registry import load_modes


def build_parser() -> argparse.ArgumentParser:
    modes = load_modes()
    p = argparse.ArgumentParser(
        description="Tokenize JSONL records (or repository directories) into Megatron indexed datasets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="modes:\n" + "\n".join(f"  {n}: {s.help}" for n, s in sorted(modes.items())),
    )
    p.add_argument("--mode", choices=sorted(modes), default="plain",
                   help="how records become documents (see the list below)")
    p.add_argument("--input", nargs="+", help="JSONL input files (.gz allowed), one record per line")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.{bin,idx}")
    p.add_argument("--tokenizer", "--tokenizer-model", dest="tokenizer", required=True,
                   help="Hugging Face tokenizer directory")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="record fields to tokenize")
    p.add_argument("--append-eod", action="store_true", help="plain/text/math: end each document with EOD")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, default=1234, help="seed for FIM and file order (per record)")
    p.add_argument("--record-number-key", metavar="FIELD",
                   help="seed each record (FIM) from this integer field instead of its position in the input "
                        "(what `megatron-qwen corpus` does, so its shards can be checked against this command)")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20, help="input bytes per worker task")
    p.add_argument("--decontaminate", nargs="+", metavar="BENCH",
                   help="drop records sharing a word 10-gram with: humaneval, or NAME=PATH (mbpp=..., gsm8k=...)")
    p.add_argument("--report", help="JSON report path (default {prefix}_report.json)")
    p.add_argument("--strict", action="store_true", help="stop at the first mode error instead of counting it")
    p.add_argument("--no-fast-encoder", action="store_true", help="always use the Hugging Face encoder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    added = set()
    for spec in modes.values():
        if spec.add_arguments is not None and spec.add_arguments not in added:
            spec.add_arguments(p)
            added.add(spec.add_arguments)
    return p


def validate(options: argparse.Namespace) -> None:
    for name in ("fim_rate", "fim_spm_rate"):
        value = getattr(options, name, None)
        if value is not None and not 0.0 <= value <= 1.0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be in [0, 1], got {value}")
    if options.workers < 1:
        raise SystemExit(f"error: --workers must be >= 1, got {options.workers}")
    if getattr(options, "max_tokens", None) is not None and options.max_tokens < 8:
        raise SystemExit(f"error: --max-tokens must be >= 8, got {options.max_tokens}")
    if not options.input and not getattr(options, "input_dir", None):
        raise SystemExit("error: give --input JSONL files (or --input-dir for --mode repo)")
    if getattr(options, "input_dir", None) and options.mode != "repo":
        raise SystemExit("error: --input-dir is only read by --mode repo")


def main(argv: list[str] | None = None) -> int:
    from megatron_qwen.data.preprocess.pipeline import run

    options = build_parser().parse_args(argv)
    validate(options)
    report = run(options)
    summary = {k: report[k] for k in ("documents", "tokens", "fim_share", "skipped", "tokens_per_s", "report_path")}
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0
