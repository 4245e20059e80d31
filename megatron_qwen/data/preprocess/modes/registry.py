"""The registry of preprocessing modes: a mode is a small function from one input record to documents.

Why it exists: `megatron-qwen preprocess` handles reading, workers, encoding, writing, reports and
atomic renames once; what differs between pretraining code, repositories, prose, SFT chats or DPO pairs
is only how one record becomes token documents. Each of those is a mode registered here.

How to add a mode (e.g. `sft`, `sft-fim`, `dpo`): put it in a module `megatron_qwen/data/preprocess/modes/<name>.py`
(every module of that package is imported by `load_modes()`, so nothing else needs editing) and
register it at import time:

    from megatron_qwen.data.preprocess.modes.registry import Document, ModeContext, Piece, SkipRecord, register_mode

    def sft(record: dict, ctx: ModeContext) -> list[Document]:
        # one chat -> one document; loss only on assistant turns
        if "messages" not in record:
            raise SkipRecord("missing field 'messages'")      # counted in the report; the run goes on
        im_start = ctx.tokenizer.token_id("<|im_start|>")
        return [Document([Piece(im_start, loss=False), Piece("user\nhi", loss=False), ...,
                          Piece("answer", loss=True), Piece(ctx.tokenizer.eod, loss=True)])]

    register_mode("sft", sft, required_tokens=("<|im_start|>", "<|im_end|>"), loss_mask=True,
                  add_arguments=lambda parser: parser.add_argument("--system-prompt"))

A mode function takes one decoded JSON record (a dict) and returns (or yields) `Document`s. A `Piece`
holds raw text (encoded with `tokenizer.encode_raw`, so literal control-token text stays text), one
control id (`int`), or ids the mode encoded itself (numpy array or list). The framework batch-encodes all
text pieces of a chunk of records with the fast encoder and concatenates each document.
`Piece(..., new_sequence=True)` starts a new sequence inside the document (Megatron's
`--split-sentences`: one sequence per sentence; the document boundary comes after the last one).
Sequences that encode to nothing are dropped; a document that encodes to nothing is skipped.

With `loss_mask=True` the writer also writes `{prefix}_loss_mask_document.{bin,idx}` (uint8, one 0/1
per token, the same sequence and document boundaries as `{prefix}_text_document`); `Piece.loss` gives
the value for every token of the piece.

`ctx.rng` is a `random.Random` seeded from (`--seed`, record number), so outputs do not depend on the
number of workers. `ctx.count(name, n)` adds to a counter shown in the JSON report (`fim_documents`, ...).
`raise SkipRecord(reason)` skips the record with that reason. Other exceptions are counted as
`mode_error:<Type>` (or raised with `--strict`). Workers are forked after the registry is loaded, so
`prepare` resources (e.g. a trained sentence splitter) reach them without pickling.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from megatron_qwen.data.decontamination.ngrams import Decontaminator
    from megatron_qwen.data.tokenizer.qwen import QwenTokenizer


class SkipRecord(Exception):
    """Raised by a mode for a record it cannot use; the message is the reason counted in the report."""


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a document: raw text, a single control id, or already-encoded ids."""

    content: str | int | np.ndarray | list[int]
    loss: bool = True
    new_sequence: bool = False


@dataclass(slots=True)
class Document:
    """One document of the output dataset (one or more sequences) for output `key` (`{prefix}_{key}_document`)."""

    pieces: list[Piece]
    key: str = "text"


@dataclass
class ModeContext:
    """What a mode gets besides the record: tokenizer, options, resources, a per-record RNG, counters."""

    tokenizer: QwenTokenizer
    options: argparse.Namespace
    resources: dict[str, Any] = field(default_factory=dict)  # what the mode's `prepare` returned
    decontam: Decontaminator | None = None  # set with --decontaminate (only modes with decontam_self use it)
    counters: Counter = field(default_factory=Counter)
    removed: list[dict] = field(default_factory=list)  # decontamination details a mode reports itself
    seed: int = 0
    record_number: int = 0
    _rng: random.Random | None = None

    def start_record(self, record_number: int) -> None:
        self.record_number = record_number
        self._rng = None

    @property
    def rng(self) -> random.Random:
        """A generator that depends only on (--seed, record number), not on workers or chunking."""
        if self._rng is None:
            self._rng = random.Random(self.seed * 1_000_000_007 + self.record_number)
        return self._rng

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n


ModeFn = Callable[[dict, ModeContext], Iterable[Document]]


@dataclass(frozen=True)
class ModeSpec:
    name: str
    fn: ModeFn
    required_tokens: tuple[str, ...] = ()
    loss_mask: bool = False
    add_arguments: Callable[[argparse.ArgumentParser], object] | None = None
    help: str = ""
    # Output keys (default ["text"]): each key k is written to {prefix}_{k}_document.{bin,idx}.
    outputs: Callable[[argparse.Namespace], list[str]] | None = None
    # Runs once in the main process before workers start: (options, tokenizer, sample_records) -> resources.
    prepare: Callable[..., dict] | None = None
    # For inputs that are not JSONL (e.g. `repo --input-dir`): options -> iterator of (label, record) pairs.
    read_records: Callable[[argparse.Namespace], Iterable[tuple[str, dict]]] | None = None
    # True when the mode checks decontamination itself (per file, say) instead of per record.
    decontam_self: bool = False


MODES: dict[str, ModeSpec] = {}


def register_mode(name: str, fn: ModeFn, **kwargs) -> ModeSpec:
    """Add a mode under `name` (keyword arguments are ModeSpec fields); an error if the name is taken."""
    existing = MODES.get(name)
    if existing is not None and existing.fn is not fn:
        raise ValueError(f"preprocess mode {name!r} is already registered by {existing.fn.__module__}")
    kwargs.setdefault("help", (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
    kwargs["required_tokens"] = tuple(kwargs.get("required_tokens", ()))
    spec = ModeSpec(name, fn, **kwargs)
    MODES[name] = spec
    return spec


def load_modes() -> dict[str, ModeSpec]:
    """Import every module of `megatron_qwen.data.preprocess.modes` (each registers its modes); the registry."""
    import megatron_qwen.data.preprocess.modes as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "registry":
            importlib.import_module(f"{package.__name__}.{info.name}")
    return MODES


def get_mode(name: str) -> ModeSpec:
    load_modes()
    if name not in MODES:
        raise KeyError(f"unknown preprocess mode {name!r}; registered modes: {sorted(MODES)}")
    return MODES[name]
