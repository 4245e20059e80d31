"""Worker side of preprocessing: a chunk of raw records -> token arrays ready for the indexed writer.

Why it exists: this is the hot loop, run inside each worker. It splits a block of JSONL bytes into lines
and decodes them (orjson when installed, the standard library's rules where the two differ), counting
malformed, non-UTF-8 and non-object records instead of failing; applies the mode function; encodes every
text piece of the chunk in one flat batch call; and assembles each output with numpy alone (one gather
over all pieces, no per-token Python), so only a few arrays cross the process boundary. Each stage's
seconds are added to `ChunkResult.profile` for the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from megatron_qwen.data.preprocess.modes.registry import Document, ModeContext, ModeSpec, SkipRecord

try:  # a faster parser with the same results on valid JSON; every line it rejects goes to `json`
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    _fast_loads = json.loads

MAX_EXAMPLES_PER_CHUNK = 5


@dataclass
class Chunk:
    """Records to process: raw JSONL lines (bytes) or already-decoded dicts, with where they came from."""

    source: str
    first_line: int  # line number of the first item in `source` (1-based)
    first_record: int  # global record number of the first item
    items: list  # bytes lines or dicts (empty when `data` holds the lines)
    nbytes: int = 0
    data: bytes | None = None  # whole JSONL lines, split in the worker

    def lines(self) -> list:
        if self.data is None:
            return self.items
        lines = self.data.split(b"\n")
        return lines[:-1] if not lines[-1] else lines


@dataclass
class OutputArrays:
    tokens: np.ndarray
    sequence_lengths: np.ndarray
    doc_sequence_counts: np.ndarray
    loss_mask: np.ndarray | None = None


@dataclass
class ChunkResult:
    outputs: dict[str, OutputArrays]
    records: int = 0
    documents: int = 0
    tokens: int = 0
    nbytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    removed: list[dict] = field(default_factory=list)
    profile: Counter = field(default_factory=Counter)  # seconds per stage (decode+build, encode, assemble)


@dataclass
class WorkerState:
    """Everything a worker needs; set once in the parent before the workers are forked."""

    spec: ModeSpec
    ctx: ModeContext
    output_keys: list[str]
    strict: bool = False
    decontam_keys: tuple[str, ...] = ()
    parallel_encode: bool | None = None  # False when the workers are threads, one chunk each
    record_number_key: str | None = None  # seed each record from this integer field, not its position


_STATE: WorkerState | None = None


def set_worker_state(state: WorkerState) -> None:
    global _STATE
    _STATE = state


def _decode(item) -> dict:
    """bytes line -> dict, raising SkipRecord with the reason for bad input."""
    if isinstance(item, dict):
        return item
    try:
        record = _fast_loads(item)
    except ValueError:  # orjson is stricter (lone surrogates, NaN, huge ints): the standard rules decide
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SkipRecord("non-UTF-8 bytes") from e
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise SkipRecord("malformed JSON") from e
    if not isinstance(record, dict):
        raise SkipRecord("record is not a JSON object")
    return record


class _Collector:
    """Accumulates documents of a chunk as pieces; encodes all text pieces at once in `finish`.

    Each piece becomes a source span: text pieces point into the flat encoding of the chunk's texts,
    control ids and pre-encoded arrays into a second array placed after it. Each output is then one
    gather of those spans in order.
    """

    def __init__(self, keys: list[str], loss_mask: bool, parallel: bool | None = None):
        self.keys = keys
        self.loss_mask = loss_mask
        self.parallel = parallel
        self.docs: list[Document] = []
        self.texts: list[str] = []
        self.extra: list[np.ndarray] = []
        self.source: list[int] = []  # per piece: text index k >= 0, or -1 - j for extra[j]
        self._control: dict[int, np.ndarray] = {}

    def add(self, doc: Document) -> None:
        if doc.key not in self.keys:
            raise ValueError(f"mode produced a document for output {doc.key!r}; declared outputs: {self.keys}")
        for piece in doc.pieces:
            c = piece.content
            if isinstance(c, str):
                self.source.append(len(self.texts))
                self.texts.append(c)
                continue
            if isinstance(c, int | np.integer):
                arr = self._control.get(int(c))
                if arr is None:
                    arr = self._control[int(c)] = np.asarray([c], dtype=np.int32)
            else:
                arr = np.asarray(c, dtype=np.int32)
            self.source.append(-1 - len(self.extra))
            self.extra.append(arr)
        self.docs.append(doc)

    def _spans(self, tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(all source ids, start of each piece in it, length of each piece)."""
        tokens, offsets = tokenizer.encode_raw_flat(self.texts, self.parallel)
        extra_lens = np.fromiter((a.size for a in self.extra), np.int64, len(self.extra))
        extra_starts = tokens.size + np.concatenate([[0], np.cumsum(extra_lens)[:-1]]).astype(np.int64)
        src = np.concatenate([tokens, *self.extra]) if self.extra else tokens
        source = np.asarray(self.source, dtype=np.int64)
        is_text = source >= 0
        k = np.where(is_text, source, 0)
        j = np.where(is_text, 0, -1 - source)
        starts = np.where(is_text, offsets[k], extra_starts[j] if self.extra else 0)
        lens = np.where(is_text, offsets[np.minimum(k + 1, offsets.size - 1)] - offsets[k],
                        extra_lens[j] if self.extra else 0)
        return src, starts, lens

    def finish(self, tokenizer, profile: Counter) -> tuple[dict[str, OutputArrays], int, int]:
        t0 = time.perf_counter()
        if self.source:
            src, starts, lens = self._spans(tokenizer)
        else:
            src, starts, lens = np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        t1 = time.perf_counter()
        lens_list = lens.tolist()
        pieces = {k: [] for k in self.keys}  # piece numbers per output, in order
        seq_lens = {k: [] for k in self.keys}
        doc_counts = {k: [] for k in self.keys}
        documents = empty = 0
        p = 0
        for doc in self.docs:
            lengths, current, first = [], 0, p
            for piece in doc.pieces:
                n = lens_list[p]
                if piece.new_sequence and current and n:  # an empty sentence starts nothing
                    lengths.append(current)
                    current = 0
                current += n
                p += 1
            if current:
                lengths.append(current)
            if not lengths:
                empty += 1
                continue
            pieces[doc.key].extend(range(first, p))
            seq_lens[doc.key].extend(lengths)
            doc_counts[doc.key].append(len(lengths))
            documents += 1
        loss = np.fromiter((piece.loss for doc in self.docs for piece in doc.pieces), np.uint8, len(lens_list)) \
            if self.loss_mask else None
        outputs = {}
        for key in self.keys:
            chosen = np.asarray(pieces[key], dtype=np.int64)
            tokens = _gather(src, starts[chosen], lens[chosen])
            mask = np.repeat(loss[chosen], lens[chosen]) if loss is not None else None
            outputs[key] = OutputArrays(tokens, np.asarray(seq_lens[key], np.int32),
                                        np.asarray(doc_counts[key], np.int64), mask)
        profile["encode"] += t1 - t0
        profile["assemble"] += time.perf_counter() - t1
        return outputs, documents, empty


def _gather(src: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """src[starts[0]:starts[0]+lens[0]] + src[starts[1]:...] + ..., as one vectorized gather."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int32)
    if lens.size == 1:
        return src[starts[0]:starts[0] + total].copy()
    out_starts = np.cumsum(lens) - lens
    index = np.repeat(starts - out_starts, lens) + np.arange(total, dtype=np.int64)
    return src[index]


def process_chunk(chunk: Chunk, state: WorkerState | None = None) -> ChunkResult:
    """Run the mode over one chunk; bad records are counted with file:line examples, never fatal."""
    state = state or _STATE
    spec = state.spec
    ctx = dataclasses.replace(state.ctx, counters=Counter(), removed=[])  # one per chunk: threads may share state
    result = ChunkResult(outputs={}, nbytes=chunk.nbytes)
    collector = _Collector(state.output_keys, spec.loss_mask, state.parallel_encode)
    t0 = time.perf_counter()
    for offset, item in enumerate(chunk.lines()):
        line = chunk.first_line + offset
        if isinstance(item, bytes) and not item.strip():
            result.counters["blank_lines"] += 1
            continue
        result.records += 1
        ctx.start_record(chunk.first_record + offset)
        try:
            record = _decode(item)
            if state.record_number_key is not None:
                ctx.start_record(_record_number(record, state.record_number_key))
            if ctx.decontam is not None and not spec.decontam_self:
                hit = ctx.decontam.find_in_record({k: record[k] for k in state.decontam_keys if k in record})
                if hit:
                    result.removed.append({"source": chunk.source, "line": line, "benchmark": hit.benchmark,
                                           "ngram": hit.ngram})
                    raise SkipRecord(f"decontaminated:{hit.benchmark}")
            docs = list(spec.fn(record, ctx))
        except SkipRecord as e:
            _skip(result, chunk.source, line, str(e))
            continue
        except Exception as e:  # a mode bug or an input shape it did not expect: count it, keep going
            if state.strict:
                raise RuntimeError(f"{chunk.source}:{line}: mode {spec.name!r} failed: {e}") from e
            _skip(result, chunk.source, line, f"mode_error:{type(e).__name__}", detail=str(e))
            continue
        for doc in docs:
            collector.add(doc)
    result.profile["decode+build"] += time.perf_counter() - t0
    result.outputs, result.documents, empty = collector.finish(ctx.tokenizer, result.profile)
    if empty:
        result.skipped["empty document"] += empty
    result.tokens = sum(o.tokens.size for o in result.outputs.values())
    result.counters.update(ctx.counters)
    for entry in ctx.removed:
        entry.setdefault("source", chunk.source)
    result.removed.extend(ctx.removed)
    return result


def _record_number(record: dict, key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SkipRecord(f"field '{key}' is not an integer record number")
    return value


def _skip(result: ChunkResult, source: str, line: int, reason: str, detail: str | None = None) -> None:
    result.skipped[reason] += 1
    if sum(1 for e in result.examples if e["reason"] == reason) < MAX_EXAMPLES_PER_CHUNK:
        example = {"source": source, "line": line, "reason": reason}
        if detail:
            example["detail"] = detail[:200]
        result.examples.append(example)


def encode_pieces(tokenizer, pieces) -> np.ndarray:
    """Token ids of one list of pieces (text encoded raw, control ids inserted): for tests and one-off use."""
    out = []
    for p in pieces:
        c = p.content
        if isinstance(c, str):
            out.append(tokenizer.encode_raw_np(c))
        elif isinstance(c, int | np.integer):
            out.append(np.asarray([c], dtype=np.int32))
        else:
            out.append(np.asarray(c, dtype=np.int32))
    return np.concatenate(out) if out else np.zeros(0, np.int32)
