"""Worker side of preprocessing: a chunk of raw records -> token arrays ready for the indexed writer.

Why it exists: this is the hot loop, run inside each worker process. It decodes JSON lines (counting
malformed, non-UTF-8 and non-object records instead of failing), applies the mode function, encodes every
text piece of the chunk in one batch call, and returns one concatenated numpy array per output with the
sequence lengths and sequences-per-document counts, so only a few arrays cross the process boundary.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from megatron_qwen.data.preprocess.modes.registry import Document, ModeContext, ModeSpec, SkipRecord

MAX_EXAMPLES_PER_CHUNK = 5


@dataclass
class Chunk:
    """Records to process: raw JSONL lines (bytes) or already-decoded dicts, with where they came from."""

    source: str
    first_line: int  # line number of the first item in `source` (1-based)
    first_record: int  # global record number of the first item
    items: list  # bytes lines or dicts
    nbytes: int = 0


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


@dataclass
class WorkerState:
    """Everything a worker needs; set once in the parent before the workers are forked."""

    spec: ModeSpec
    ctx: ModeContext
    output_keys: list[str]
    strict: bool = False
    decontam_keys: tuple[str, ...] = ()


_STATE: WorkerState | None = None


def set_worker_state(state: WorkerState) -> None:
    global _STATE
    _STATE = state


def _decode(item) -> dict:
    """bytes line -> dict, raising SkipRecord with the reason for bad input."""
    if isinstance(item, dict):
        return item
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
    """Accumulates documents of a chunk as pieces; encodes all text pieces at once in `finish`."""

    def __init__(self, keys: list[str], loss_mask: bool):
        self.keys = keys
        self.loss_mask = loss_mask
        self.docs: list[Document] = []
        self.texts: list[str] = []

    def add(self, doc: Document) -> None:
        if doc.key not in self.keys:
            raise ValueError(f"mode produced a document for output {doc.key!r}; declared outputs: {self.keys}")
        for piece in doc.pieces:
            if isinstance(piece.content, str):
                self.texts.append(piece.content)
        self.docs.append(doc)

    def finish(self, tokenizer) -> tuple[dict[str, OutputArrays], int, int]:
        encoded = iter(tokenizer.encode_raw_batch_np(self.texts))
        control: dict[int, np.ndarray] = {}
        parts = {k: [] for k in self.keys}
        masks = {k: [] for k in self.keys}
        seq_lens = {k: [] for k in self.keys}
        doc_counts = {k: [] for k in self.keys}
        documents = empty = 0
        for doc in self.docs:
            lengths, current = [], 0
            for piece in doc.pieces:
                c = piece.content
                if isinstance(c, str):
                    arr = next(encoded)
                elif isinstance(c, int | np.integer):
                    arr = control.get(int(c))
                    if arr is None:
                        arr = control[int(c)] = np.asarray([c], dtype=np.int32)
                else:
                    arr = np.asarray(c, dtype=np.int32)
                if piece.new_sequence and current and arr.size:  # an empty sentence starts nothing
                    lengths.append(current)
                    current = 0
                current += arr.size
                parts[doc.key].append(arr)
                if self.loss_mask:
                    masks[doc.key].append(np.full(arr.size, piece.loss, dtype=np.uint8))
            if current:
                lengths.append(current)
            if not lengths:
                empty += 1
                continue
            seq_lens[doc.key].extend(lengths)
            doc_counts[doc.key].append(len(lengths))
            documents += 1
        outputs = {}
        for k in self.keys:
            tokens = np.concatenate(parts[k]) if parts[k] else np.zeros(0, np.int32)
            mask = (np.concatenate(masks[k]) if masks[k] else np.zeros(0, np.uint8)) if self.loss_mask else None
            outputs[k] = OutputArrays(tokens, np.asarray(seq_lens[k], np.int32), np.asarray(doc_counts[k], np.int64), mask)
        return outputs, documents, empty


def process_chunk(chunk: Chunk, state: WorkerState | None = None) -> ChunkResult:
    """Run the mode over one chunk; bad records are counted with file:line examples, never fatal."""
    state = state or _STATE
    ctx, spec = state.ctx, state.spec
    ctx.counters = Counter()
    ctx.removed = []
    result = ChunkResult(outputs={}, nbytes=chunk.nbytes)
    collector = _Collector(state.output_keys, spec.loss_mask)
    for offset, item in enumerate(chunk.items):
        line = chunk.first_line + offset
        if isinstance(item, bytes) and not item.strip():
            result.counters["blank_lines"] += 1
            continue
        result.records += 1
        ctx.start_record(chunk.first_record + offset)
        try:
            record = _decode(item)
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
    result.outputs, result.documents, empty = collector.finish(ctx.tokenizer)
    if empty:
        result.skipped["empty document"] += empty
    result.tokens = sum(o.tokens.size for o in result.outputs.values())
    result.counters.update(ctx.counters)
    for entry in ctx.removed:
        entry.setdefault("source", chunk.source)
    result.removed.extend(ctx.removed)
    return result


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
