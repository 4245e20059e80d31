"""The registry of preprocessing modes: a mode is a small function from one input record to documents.

Why it exists: `tools/preprocess_data.py` handles reading, workers, encoding, writing, reports and
atomic renames once; what differs between pretraining code, repositories, prose, SFT chats or DPO pairs
is only how one record becomes token documents. Each of those is a mode registered here.

How to add a mode (e.g. `sft`, `sft-fim`, `dpo` in their own module):

    from megatron_qwen.data.modes import Document, Piece, SkipRecord, register_mode

    def sft(record: dict, ctx: ModeContext) -> list[Document]:
        if "messages" not in record:
            raise SkipRecord("missing field 'messages'")       # counted in the report, run goes on
        im_start = ctx.tokenizer.token_id("<|im_start|>")
        return [Document([Piece(im_start, loss=False), Piece("user\\nhi", loss=False), ...,
                          Piece("answer", loss=True), Piece(ctx.tokenizer.eod, loss=True)])]

    register_mode("sft", sft, required_tokens=("<|im_start|>", "<|im_end|>"), loss_mask=True,
                  add_arguments=lambda parser: parser.add_argument("--system-prompt"))

A `Piece` holds raw text (encoded with `tokenizer.encode_raw`, so literal control-token text stays text),
one control id (`int`), or ids the mode already encoded (numpy array or list). The framework encodes all
text pieces of a batch of records at once with the fast encoder and concatenates each document.
`Piece(..., new_sequence=True)` starts a new sequence inside the document (Megatron's
`--split-sentences`: one sequence per sentence, the document boundary after the last one).

When the mode is registered with `loss_mask=True`, the writer also writes
`{prefix}_loss_mask_document.{bin,idx}` (uint8, one 0/1 per token, the same sequence and document
boundaries as the tokens); `Piece.loss` gives the value for every token of that piece.

`ctx.rng` is a `random.Random` seeded from (`--seed`, record number), so outputs do not depend on the
number of workers. `ctx.count(name, n)` adds to a counter that appears in the JSON report (e.g.
`fim_documents`, `truncated_files`). Modes must be importable at module level (workers are forked).
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from megatron_qwen.data.tokenizer import QwenTokenizer


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
    """One document of the output dataset (one or more sequences)."""

    pieces: list[Piece]


@dataclass
class ModeContext:
    """What a mode gets besides the record: tokenizer, parsed options, a per-record RNG, counters."""

    tokenizer: QwenTokenizer
    options: argparse.Namespace
    rng: random.Random = field(default_factory=random.Random)
    counters: Counter = field(default_factory=Counter)
    record_number: int = 0

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
    # Set for modes whose input is not JSONL records (e.g. `repo --input-dir`): options -> iterator of records.
    read_records: Callable[[argparse.Namespace], Iterable[dict]] | None = None


MODES: dict[str, ModeSpec] = {}


def register_mode(
    name: str,
    fn: ModeFn,
    *,
    required_tokens: Iterable[str] = (),
    loss_mask: bool = False,
    add_arguments: Callable[[argparse.ArgumentParser], object] | None = None,
    help: str = "",
    read_records: Callable[[argparse.Namespace], Iterable[dict]] | None = None,
) -> ModeSpec:
    """Add a mode under `name` (an error if the name is taken by a different function)."""
    existing = MODES.get(name)
    if existing is not None and existing.fn is not fn:
        raise ValueError(f"preprocess mode {name!r} is already registered by {existing.fn.__module__}")
    spec = ModeSpec(name, fn, tuple(required_tokens), loss_mask, add_arguments, help or (fn.__doc__ or "").strip(),
                    read_records)
    MODES[name] = spec
    return spec


def get_mode(name: str) -> ModeSpec:
    if name not in MODES:
        raise KeyError(f"unknown preprocess mode {name!r}; registered modes: {sorted(MODES)}")
    return MODES[name]
