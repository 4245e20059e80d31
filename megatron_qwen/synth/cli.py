"""Command line of `megatron-qwen synth`: code snippets -> verified SFT records and DPO pairs.

    megatron-qwen synth --input snippets.jsonl --url http://127.0.0.1:8000 --model qwen --output out/

Writes under --output (each file atomically, at the end): sft.jsonl (the `sft` mode's input), dpo.jsonl
(the `dpo` mode's input), drops.jsonl (every drop with its reason), records.jsonl (every step's record with
its provenance), report.json and report.txt. The request cache (default out/cache.jsonl) is appended as
responses arrive, so a killed run continues where it stopped. Exit 0: done; 2: bad input; 3: stopped by
--max-requests (rerun to continue).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from megatron_qwen.data.decontamination.ngrams import DEFAULT_N, Decontaminator
from megatron_qwen.platform.files import write_atomic
from megatron_qwen.platform.jsonl import JsonlError, iter_jsonl
from megatron_qwen.sandbox import Limits, Sandbox, SandboxConfig
from megatron_qwen.synth.client import Client, ClientConfig, RequestBudgetExhausted, RequestCache
from megatron_qwen.synth.pipeline import Pipeline, Settings, snippets_from_records, summary, to_jsonl
from megatron_qwen.synth.prompts import STEPS, load_templates
from megatron_qwen.synth.verify import Verifier


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="JSONL code records: content (or text), "
                   "language (or lang) and/or path, optional id")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--url", required=True, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="model name sent in each request")
    p.add_argument("--judge-model", help="judge model name (default: --model)")
    p.add_argument("--judge-url", help="judge server (default: --url)")
    p.add_argument("--api", choices=("chat", "completions"), default="chat")
    p.add_argument("--samples", type=int, default=4, help="answers sampled per instruction (N)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--min-score", type=float, default=0.6, help="checklist score (0..1) an answer needs")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay, doubled each retry")
    p.add_argument("--max-requests", type=int, help="send at most this many new requests, then stop (exit 3)")
    p.add_argument("--cache", help="request cache file (default: OUTPUT/cache.jsonl)")
    p.add_argument("--workers", type=int, default=2, help="sandboxes running at once")
    p.add_argument("--run-timeout", type=float, default=10.0, help="sandbox wall clock per program, seconds")
    p.add_argument("--isolation", choices=("bwrap", "none"), default="bwrap")
    p.add_argument("--benchmarks", nargs="*", default=["humaneval"],
                   help="decontaminate against: humaneval or NAME=PATH (none: give the flag with no value)")
    p.add_argument("--ngram", type=int, default=DEFAULT_N)
    for step in STEPS:
        p.add_argument(f"--prompt-{step}", metavar="FILE", help=f"replace the {step} prompt template")
    p.add_argument("--no-progress", action="store_true")
    return p


def read_records(paths: list[str]):
    """(line number, record) over the JSONL inputs; a bad line is one error naming file and line."""
    for path in paths:
        try:
            yield from iter_jsonl(path)
        except JsonlError as err:
            raise SystemExit(f"error: {err}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("samples", "concurrency", "workers"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1")
    try:
        templates = load_templates({step: getattr(args, f"prompt_{step}") for step in STEPS})
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        cache = RequestCache(args.cache or out / "cache.jsonl")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    snippets, early = snippets_from_records(read_records(args.input))
    decontaminator = Decontaminator.from_specs(args.benchmarks, n=args.ngram) if args.benchmarks else None
    client = Client(ClientConfig(url=args.url, model=args.model, api=args.api, timeout_s=args.timeout,
                                 retries=args.retries, backoff_s=args.backoff, max_requests=args.max_requests),
                    cache)
    sandbox = Sandbox(SandboxConfig(isolation=args.isolation, limits=Limits(timeout_s=args.run_timeout)))
    settings = Settings(model=args.model, judge_model=args.judge_model or args.model, judge_url=args.judge_url,
                        samples=args.samples, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                        max_tokens=args.max_tokens, min_score=args.min_score, concurrency=args.concurrency,
                        progress=not args.no_progress)
    pipeline = Pipeline(client, Verifier(sandbox, workers=args.workers, progress=not args.no_progress), templates,
                        settings, decontaminator)
    try:
        result = run_pipeline(pipeline, snippets, early)
    except RequestBudgetExhausted as err:
        print(f"stopped: {err}; {client.new_requests} requests sent and cached in {cache.path}; rerun to continue",
              file=sys.stderr)
        return 3
    write_outputs(out, result)
    print(summary(result.report), file=sys.stderr)
    return 0


def run_pipeline(pipeline: Pipeline, snippets, early):
    return pipeline.run(snippets, early)


def write_outputs(out: Path, result) -> None:
    write_atomic(out / "sft.jsonl", to_jsonl(result.sft))
    write_atomic(out / "dpo.jsonl", to_jsonl(result.pairs))
    write_atomic(out / "drops.jsonl", to_jsonl(result.drops))
    write_atomic(out / "records.jsonl", to_jsonl(result.records))
    report = dict(result.report)
    report["drops_by_level"] = {lvl: dict(Counter(d["reason"] for d in result.drops if d["level"] == lvl))
                                for lvl in sorted({d["level"] for d in result.drops})}
    write_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "report.txt", summary(result.report) + "\n")


if __name__ == "__main__":
    sys.exit(main())
