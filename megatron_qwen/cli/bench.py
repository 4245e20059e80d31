"""Code benchmarks inside training: the callable `megatron-qwen train` hands the trainer when `bench.benchmarks`
is set.

The trainer sits below generation (`eval`) and scoring (`codebench`), so this module, on the command-line
layer, joins them: at each `bench.interval` step and at the end of the stage every rank calls
`run(chunks, step)` on the weights it is training; `Generator` decodes greedily with the KV cache over the
trainer's own TP/PP/DP layout (data-parallel replicas share the prompts); rank 0 writes the completions
and scores them in the sandbox exactly as `megatron-qwen evaluate --samples` does; every rank returns the
same `{"eval/<benchmark>/<metric>": value}`. Prompts, completions and scored records go to
`<checkpoint.dir>/benchmarks/iter_<step>/<benchmark>/` for inspection.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from megatron_qwen.config import Config


def make_benchmarks(cfg: Config) -> Callable[[list, int], dict[str, float]] | None:
    """None when the stage lists no benchmark; else the collective `run(chunks, step)`."""
    b = cfg.bench
    if not b.benchmarks:
        return None
    from megatron_qwen.eval.generate import load_tokenizer_for

    tokenizer = load_tokenizer_for(b.tokenizer)
    root = Path(cfg.checkpoint.dir or ".") / "benchmarks"

    def run(chunks: list, step: int) -> dict[str, float]:
        import torch.distributed as dist

        from megatron_qwen.codebench import model_eval
        from megatron_qwen.codebench.cli import score_file
        from megatron_qwen.codebench.report import write_results
        from megatron_qwen.eval.generate import Generator

        generator = Generator(chunks, tokenizer, vocab_size=tokenizer.vocab_size, data_parallel=True)
        lead = dist.get_rank() == 0
        metrics: dict[str, float] = {}
        for name in b.benchmarks:
            out = root / f"iter_{step:07d}" / name
            completions = out / "completions.jsonl"
            if lead:
                out.mkdir(parents=True, exist_ok=True)
            model_eval.write_completions(generator, name, None, completions, max_tokens=b.max_tokens,
                                         limit=b.limit, write=lead)
            summary = [None]
            if lead:
                summary[0], records = score_file(completions, name, workers=b.workers)
                write_results(out, summary[0], records)
            dist.broadcast_object_list(summary, src=0)
            metrics.update({f"eval/{name}/{key}": value for key, value in headline(summary[0]).items()})
        return metrics

    return run


def headline(summary: dict) -> dict[str, float]:
    """The numbers to plot from a scored summary: pass@k, and exact match where the benchmark has one."""
    out = {key: float(value) for key, value in summary.get("pass_at_k", {}).items() if value is not None}
    if summary.get("exact_match") is not None:
        out["exact_match"] = float(summary["exact_match"])
    return out
