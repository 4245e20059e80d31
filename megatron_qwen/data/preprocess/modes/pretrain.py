"""The file-level pretraining modes: `plain` (Megatron-LM compatible), `text`, `math` and `file` (code + FIM).

Why it exists: these are the record -> document rules of stage 1 (docs/formats.md). `plain` reproduces
Megatron-LM's `megatron-qwen preprocess` token for token (one document per record and `--json-keys`
key, a list value is a list of sentences, `--append-eod`, `--split-sentences`), except that literal
control-token text inside a record is encoded as text, never as a control id, and that empty records are
skipped and counted instead of written as empty documents. `text` and `math` are the same rule under the
names the blend uses, so their reports say which domain they processed. `file` makes one document per
source file and applies file-level FIM (PSM/SPM) at `--fim-rate`; it always ends documents with EOD.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from megatron_qwen.data.formats.code import ControlIds, file_document
from megatron_qwen.data.preprocess.modes.registry import (
    Document,
    ModeContext,
    Piece,
    SkipRecord,
    register_mode,
)
from megatron_qwen.data.tokenizer.qwen import EOD_TOKEN, FIM_TOKENS

if TYPE_CHECKING:  # nltk (Punkt) costs 0.4 s to import: only --split-sentences loads it
    from megatron_qwen.data.formats.sentences import SentenceSplitter


def text_field(record: dict, key: str) -> str | list[str]:
    """The value of `key`: a non-empty string or list of strings, else SkipRecord naming the field."""
    if key not in record:
        raise SkipRecord(f"missing field '{key}'")
    value = record[key]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if not any(value):
            raise SkipRecord(f"empty field '{key}'")
        return value
    if not isinstance(value, str):
        raise SkipRecord(f"field '{key}' is not text")
    if not value:
        raise SkipRecord(f"empty field '{key}'")
    return value


def plain(record: dict, ctx: ModeContext) -> list[Document]:
    """One document per record and --json-keys key (Megatron-LM's preprocess_data)."""
    splitter: SentenceSplitter | None = ctx.resources.get("splitter")
    docs = []
    for key in ctx.options.json_keys:
        value = text_field(record, key)
        sentences = list(value) if isinstance(value, list) else [value]
        if splitter is not None:
            sentences = [s for text in sentences for s in splitter.split(text)]
        pieces = [Piece(s, new_sequence=k > 0) for k, s in enumerate(sentences)]
        if ctx.options.append_eod:
            pieces.append(Piece(ctx.tokenizer.eod))
        docs.append(Document(pieces, key=key))
    return docs


def prepare_sentences(options: argparse.Namespace, tokenizer, sample_records) -> dict:
    """Train Punkt on the input itself when --split-sentences is on."""
    if not options.split_sentences:
        return {}

    def texts():
        for record in sample_records():
            for key in options.json_keys:
                value = record.get(key) if isinstance(record, dict) else None
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    yield from (v for v in value if isinstance(v, str))

    from megatron_qwen.data.formats.sentences import SentenceSplitter, train_punkt

    params = train_punkt(texts(), max_chars=options.punkt_train_chars)
    return {"splitter": SentenceSplitter(params, keep_newlines=options.keep_newlines)}


def file_mode(record: dict, ctx: ModeContext) -> list[Document]:
    """One source file per record; file-level FIM at --fim-rate (PSM, or SPM at --fim-spm-rate)."""
    text = text_field(record, ctx.options.json_keys[0])
    if isinstance(text, list):
        text = "".join(text)
    ids = ctx.resources.get("ids") or ControlIds.of(ctx.tokenizer)
    o = ctx.options
    pieces, kind = file_document(text, ids, ctx.rng, o.fim_rate, o.fim_spm_rate, o.fim_line_level)
    if kind:
        ctx.count("fim_documents")
        ctx.count(f"fim_{kind}")
    return [Document(pieces)]


def prepare_file(options: argparse.Namespace, tokenizer, sample_records) -> dict:
    return {"ids": ControlIds.of(tokenizer)}


def add_sentence_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("plain/text/math")
    g.add_argument("--split-sentences", action="store_true",
                   help="one sequence per sentence (Punkt trained on the input itself); output *_sentence")
    g.add_argument("--keep-newlines", action="store_true",
                   help="with --split-sentences: keep the whitespace between sentences")
    g.add_argument("--punkt-train-chars", type=int, default=20_000_000,
                   help="characters of input used to train the sentence splitter")


def add_fim_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("FIM (file, repo)")
    g.add_argument("--fim-rate", type=float, default=0.5, help="share of documents given FIM")
    g.add_argument("--fim-spm-rate", type=float, default=0.0, help="share of file-level FIM documents in SPM order")
    g.add_argument("--fim-line-level", action="store_true", help="cut FIM spans at line starts, not characters")


def _outputs(options: argparse.Namespace) -> list[str]:
    return list(options.json_keys)


for _name in ("plain", "text", "math"):
    register_mode(_name, plain, required_tokens=(EOD_TOKEN,), add_arguments=add_sentence_arguments,
                  outputs=_outputs, prepare=prepare_sentences)
register_mode("file", file_mode, required_tokens=(EOD_TOKEN, *FIM_TOKENS), add_arguments=add_fim_arguments,
              prepare=prepare_file)
