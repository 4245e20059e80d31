"""Preprocessing driver: input records -> worker processes -> indexed datasets + a JSON report.

Why it exists: every mode shares the same plumbing. The main process reads the input in chunks of raw
lines (or repository directories), forked workers turn chunks into token arrays (`assemble.py`), and
the main process appends them in input order to `{prefix}_{key}_{document|sentence}.{bin,idx}` (and
`{prefix}_loss_mask_document` for modes with loss masks) under temporary names. Only when the whole input
is done are the files renamed into place and `{prefix}_report.json` written; an error or Ctrl-C removes
the temporary files. Bad records are skipped and counted by reason, never fatal.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import multiprocessing
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.pool import AsyncResult
from pathlib import Path

from tqdm import tqdm

from megatron_qwen.data.indexed import IndexedWriter, token_dtype, write_atomic_text
from megatron_qwen.data.preprocess.assemble import (
    Chunk,
    ChunkResult,
    WorkerState,
    process_chunk,
    set_worker_state,
)
from megatron_qwen.data.preprocess.modes.registry import ModeContext, ModeSpec, get_mode
from megatron_qwen.data.tokenizer.qwen import load_tokenizer

MAX_REPORTED_EXAMPLES = 50
MAX_REPORTED_REMOVED = 1000


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def jsonl_chunks(paths: list[Path], chunk_bytes: int) -> Iterator[Chunk]:
    """Blocks of whole JSONL lines of about `chunk_bytes`, numbered globally (lines are split in the worker)."""
    record = 0
    for path in paths:
        with _open_binary(path) as f:
            first_line = 1
            while True:
                data = f.read(chunk_bytes)
                if not data:
                    break
                if not data.endswith(b"\n"):
                    data += f.readline()  # finish the last line
                lines = data.count(b"\n") + (not data.endswith(b"\n"))
                yield Chunk(str(path), first_line, record, [], len(data), data)
                record += lines
                first_line += lines


def record_chunks(records: Iterable[tuple[str, dict]], chunk_bytes: int) -> Iterator[Chunk]:
    """Already-decoded records (e.g. repository directories), one chunk per ~`chunk_bytes` of content."""
    items, nbytes, first, source = [], 0, 0, ""
    for number, (label, rec) in enumerate(records):
        size = sum(len(f.get("content", "")) for f in rec.get("files", []) if isinstance(f, dict))
        if not items:
            first, source = number, label
        items.append(rec)
        nbytes += size
        if nbytes >= chunk_bytes:
            yield Chunk(source, 1, first, items, nbytes)
            items, nbytes = [], 0
    if items:
        yield Chunk(source, 1, first, items, nbytes)


def sample_records(paths: list[Path], limit_bytes: int = 50_000_000) -> Callable:
    """A function yielding decoded records from the start of the input (for `prepare`, e.g. Punkt training)."""

    def gen():
        seen = 0
        for path in paths:
            with _open_binary(path) as f:
                for line in f:
                    seen += len(line)
                    if seen > limit_bytes:
                        return
                    try:
                        yield json.loads(line)
                    except (ValueError, UnicodeDecodeError):
                        continue

    return gen


def run_chunks(chunks: Iterable[Chunk], state: WorkerState, workers: int) -> Iterator[ChunkResult]:
    """Results in input order, at most 4 chunks per worker in flight (bounded read-ahead, room for uneven
    chunks). Workers are threads when the encoder releases the GIL (gigatoken, tiktoken: one process, one
    warm tokenizer cache, nothing pickled), else forked processes."""
    set_worker_state(state)
    if workers <= 1:
        for chunk in chunks:
            yield process_chunk(chunk, state)
        return
    if state.ctx.tokenizer.encoder_name != "hf":
        state = dataclasses.replace(state, parallel_encode=False)
        pool_cm = ThreadPoolExecutor(workers)
        submit = lambda chunk: pool_cm.submit(process_chunk, chunk, state)  # noqa: E731
        get = Future.result
    else:
        pool_cm = multiprocessing.get_context("fork").Pool(workers)
        submit = lambda chunk: pool_cm.apply_async(process_chunk, (chunk,))  # noqa: E731
        get = AsyncResult.get
    with pool_cm:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(submit(chunk))
            if len(pending) >= 4 * workers:
                yield get(pending.popleft())
        while pending:
            yield get(pending.popleft())


class OutputWriters:
    """The writers of one run: one per output key, plus loss masks; commit or abort them together."""

    def __init__(self, prefix: str, keys: list[str], level: str, dtype, loss_mask: bool):
        self.paths = {k: f"{prefix}_{k}_{level}" for k in keys}
        self.writers = {k: IndexedWriter(p, dtype) for k, p in self.paths.items()}
        self.mask_writer = None
        if loss_mask:
            import numpy as np

            self.paths["loss_mask"] = f"{prefix}_loss_mask_{level}"
            self.mask_writer = IndexedWriter(self.paths["loss_mask"], np.uint8)

    def add(self, result: ChunkResult) -> None:
        for key, arrays in result.outputs.items():
            self.writers[key].add(arrays.tokens, arrays.sequence_lengths, arrays.doc_sequence_counts)
            if self.mask_writer is not None:
                self.mask_writer.add(arrays.loss_mask, arrays.sequence_lengths, arrays.doc_sequence_counts)

    def _all(self) -> list[IndexedWriter]:
        return [*self.writers.values(), *([self.mask_writer] if self.mask_writer else [])]

    def commit(self) -> None:
        for w in self._all():
            w.finish()
        for w in self._all():
            w.commit()

    def abort(self) -> None:
        for w in self._all():
            w.abort()


class _Totals:
    """Running figures for the progress bar and the report."""

    def __init__(self):
        self.records = self.documents = self.tokens = self.nbytes = self.sequences = 0
        self.skipped, self.counters = Counter(), Counter()
        self.examples: list[dict] = []
        self.removed: list[dict] = []
        self.removed_count = 0
        self.profile: Counter = Counter()  # seconds: worker stages summed over workers, main-process stages

    def add(self, r: ChunkResult) -> None:
        self.profile.update({f"worker:{k}": v for k, v in r.profile.items()})
        self.records += r.records
        self.documents += r.documents
        self.tokens += r.tokens
        self.nbytes += r.nbytes
        self.sequences += sum(o.sequence_lengths.size for o in r.outputs.values())
        self.skipped.update(r.skipped)
        self.counters.update(r.counters)
        self.examples.extend(r.examples[: max(0, MAX_REPORTED_EXAMPLES - len(self.examples))])
        self.removed_count += len(r.removed)
        self.removed.extend(r.removed[: max(0, MAX_REPORTED_REMOVED - len(self.removed))])


def _input_chunks(options: argparse.Namespace, spec: ModeSpec) -> Iterator[Chunk]:
    records = spec.read_records(options) if spec.read_records else None
    if records is not None:
        return record_chunks(records, options.chunk_bytes)
    return jsonl_chunks(input_paths(options), options.chunk_bytes)


def input_paths(options: argparse.Namespace) -> list[Path]:
    if not options.input:
        raise ValueError(f"mode {options.mode!r} needs --input (JSONL files)")
    paths = [Path(p) for p in options.input]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"--input {p} does not exist or is not a file")
    return paths


def run(options: argparse.Namespace) -> dict:
    """Process the whole input; returns the report (also written to `{prefix}_report.json`)."""
    spec = get_mode(options.mode)
    started = time.perf_counter()
    tokenizer = load_tokenizer(options.tokenizer, fast=not options.no_fast_encoder, require=spec.required_tokens)
    keys = spec.outputs(options) if spec.outputs else ["text"]
    level = "sentence" if getattr(options, "split_sentences", False) else "document"
    paths = [] if (spec.read_records and spec.read_records(options) is not None) else input_paths(options)
    resources = spec.prepare(options, tokenizer, sample_records(paths)) if spec.prepare else {}
    decontam = None
    if options.decontaminate:
        from megatron_qwen.data.decontamination.ngrams import Decontaminator

        decontam = Decontaminator.from_specs(options.decontaminate)
    ctx = ModeContext(tokenizer, options, resources, decontam, seed=options.seed)
    state = WorkerState(spec, ctx, keys, options.strict, tuple(options.json_keys),
                        record_number_key=getattr(options, "record_number_key", None))
    outputs = OutputWriters(options.output_prefix, keys, level, token_dtype(tokenizer.vocab_size), spec.loss_mask)
    totals = _Totals()
    start = time.perf_counter()
    startup = start - started
    try:
        results = run_chunks(_input_chunks(options, spec), state, options.workers)
        bar = tqdm(desc=f"preprocess {options.mode}", unit="doc", unit_scale=True, disable=options.no_progress,
                   file=sys.stderr, mininterval=0.5)
        waited = time.perf_counter()
        for result in results:
            now = time.perf_counter()
            totals.profile["main:read+wait"] += now - waited
            outputs.add(result)
            totals.add(result)
            waited = time.perf_counter()
            totals.profile["main:write"] += waited - now
            bar.update(result.documents)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{totals.tokens / elapsed / 1e6:.2f}M tok/s, {totals.nbytes / 1e6:.0f} MB", refresh=False)
        bar.close()
        now = time.perf_counter()
        outputs.commit()
        totals.profile["main:commit"] += time.perf_counter() - now
    except BaseException:
        outputs.abort()
        raise
    elapsed = time.perf_counter() - start
    report = build_report(options, tokenizer, outputs.paths, totals, elapsed, decontam)
    report["startup_s"] = round(startup, 3)  # tokenizer load (+ fast-path check), mode preparation
    report_path = options.report or f"{options.output_prefix}_report.json"
    write_atomic_text(report_path, json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(report_path)
    return report


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (Linux VmHWM: of this program image, not of a parent before exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def build_report(options, tokenizer, paths: dict, t: _Totals, elapsed: float, decontam) -> dict:
    fim = t.counters.get("fim_documents", 0)
    report = {
        "mode": options.mode,
        "inputs": [str(p) for p in (options.input or [])] or list(getattr(options, "input_dir", None) or []),
        "outputs": paths,
        "tokenizer": str(tokenizer.path),
        "encoder": tokenizer.encoder_name,
        "workers": options.workers,
        "seed": options.seed,
        "records": t.records,
        "documents": t.documents,
        "sequences": t.sequences,
        "tokens": t.tokens,
        "input_bytes": t.nbytes,
        "fim_documents": fim,
        "fim_share": fim / t.documents if t.documents else 0.0,
        "skipped": {"total": sum(t.skipped.values()), "by_reason": dict(sorted(t.skipped.items()))},
        "skipped_examples": t.examples,
        "counters": dict(sorted(t.counters.items())),
        "elapsed_s": round(elapsed, 3),  # reading, encoding, writing, renaming: rates below use this
        "documents_per_s": round(t.documents / elapsed, 1) if elapsed else None,
        "tokens_per_s": round(t.tokens / elapsed, 1) if elapsed else None,
        # where the time went: main-process stages (wall) and worker stages (summed over workers)
        "profile_s": {k: round(v, 3) for k, v in sorted(t.profile.items())},
        "peak_rss_mb": peak_rss_mb(),
    }
    if decontam is not None:
        report["decontamination"] = {**decontam.describe(), "removed_total": t.removed_count, "removed": t.removed}
    return report
