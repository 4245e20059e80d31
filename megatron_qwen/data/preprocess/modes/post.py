"""The post-training preprocessing modes: `sft`, `sft-fim` and `dpo` (stage 3 of docs/formats.md).

Why it exists: these are the record -> document rules of post-training; the formats themselves live in
`chat.py` (ChatML + loss mask), `ast_fim.py` (AST-based FIM) and `preference.py` (DPO pairs). All three
modes write a loss mask beside the tokens and encode their text themselves (to measure lengths exactly).

- `sft`: a record `{"messages": [...]}` (OpenAI layout) -> one document, one sequence; loss on answers.
- `sft-fim`: a source file per record (`--json-keys` field, default `text`; language from `lang`/`language`,
  else the extension of `path`, else `--ast-fim-lang`) -> `--ast-fim-per-file` AST-FIM samples, each one
  document, rendered as a conversation (share `--ast-fim-chat-rate`) or in the FIM token format.
  Unparseable files are skipped and counted; samples that exceed `--sft-seq-length` are dropped (a cut
  middle would teach the model to stop early). Its share of the SFT mix is set when blending datasets,
  or exactly in JSONL with `megatron-qwen make-ast-fim --share`.
- `dpo`: a record `{"prompt", "chosen", "rejected"}` -> one document of two sequences (chosen, rejected).

Shared: `--system-prompt` (`auto` = what the tokenizer's chat template inserts, `none`, or a text),
`--sft-seq-length S` (keep each sequence to S + 1 tokens, S being the stage's sequence length; over-long
ones are truncated at turn boundaries or dropped by `--sft-overlong`, and counted), the coarse-to-fine
rejection-sampling filter `--min-score X` on the record field `--score-field`, and decontamination
(`--decontaminate`) of every message text (sft, dpo) or of the source file (sft-fim).
"""

from __future__ import annotations

import argparse
import re

from megatron_qwen.data.formats.ast_fim import (
    DEFAULT_WEIGHTS,
    SpanConfig,
    UnparseableError,
    fim_conversation,
    fim_segments,
    language_of,
    make_samples,
    parse_weights,
    record_language,
)
from megatron_qwen.data.formats.chat import (
    ChatFormatError,
    Segment,
    fit_segments,
    normalize_messages,
    render_segments,
    resolve_system_prompt,
    score_rejection,
)
from megatron_qwen.data.formats.preference import PAIR_FIELDS, encode_pair, fit_pair
from megatron_qwen.data.preprocess.modes.registry import (
    Document,
    ModeContext,
    Piece,
    SkipRecord,
    register_mode,
)
from megatron_qwen.data.tokenizer.qwen import CHAT_TOKENS, EOD_TOKEN, FIM_TOKENS


def _reason(error: Exception) -> str:
    """A skip reason that groups well in the report: message indices replaced by [i]."""
    return "bad conversation: " + re.sub(r"\[\d+\]", "[i]", str(error))


def _max_tokens(options: argparse.Namespace) -> int | None:
    return None if options.sft_seq_length is None else options.sft_seq_length + 1


def _pieces(segments: list[Segment], new_sequence: bool = False) -> list[Piece]:
    return [Piece(s.ids, loss=s.loss, new_sequence=new_sequence and k == 0) for k, s in enumerate(segments)]


def _check_filters(record: dict, ctx: ModeContext, fields: tuple[str, ...]) -> None:
    """Score threshold, then decontamination of the named fields; SkipRecord when either rejects."""
    rejected = score_rejection(record, ctx.options.score_field, ctx.options.min_score)
    if rejected:
        raise SkipRecord(rejected)
    if ctx.decontam is not None:
        hit = ctx.decontam.find_in_record({k: record[k] for k in fields if k in record})
        if hit:
            ctx.removed.append({"record": ctx.record_number, "benchmark": hit.benchmark, "ngram": hit.ngram})
            raise SkipRecord(f"decontaminated:{hit.benchmark}")


def sft(record: dict, ctx: ModeContext) -> list[Document]:
    """One conversation (`messages`) per record; loss on the assistant answers only."""
    _check_filters(record, ctx, ("messages",))
    if "messages" not in record:
        raise SkipRecord("missing field 'messages'")
    try:
        messages = normalize_messages(record["messages"])
    except ChatFormatError as e:
        raise SkipRecord(_reason(e)) from None
    if not any(m["loss"] for m in messages):
        raise SkipRecord("no assistant turn to train on")
    segments = render_segments(messages, ctx.tokenizer, ctx.resources["system_prompt"])
    fitted, outcome = fit_segments(segments, _max_tokens(ctx.options), ctx.options.sft_overlong)
    if fitted is None:
        raise SkipRecord("over-long conversation dropped")
    if outcome != "fits":
        ctx.count(f"sft_{outcome}")
    return [Document(_pieces(fitted))]


def sft_fim(record: dict, ctx: ModeContext) -> list[Document]:
    """One source file per record -> AST-based FIM instruction samples (conversation or FIM format)."""
    o = ctx.options
    key = o.json_keys[0]
    text = record.get(key)
    if not isinstance(text, str) or not text.strip():
        raise SkipRecord(f"missing field '{key}'" if key not in record else f"field '{key}' is not text or empty")
    _check_filters(record, ctx, (key,))
    language = record_language(record, o.ast_fim_lang)
    if language is None:
        raise SkipRecord("unknown language")
    if len(text.encode("utf-8", "surrogatepass")) > o.ast_fim_max_file_bytes:
        raise SkipRecord("file larger than --ast-fim-max-file-bytes")
    try:
        samples = make_samples(text, language, ctx.rng, ctx.resources["span_config"], o.ast_fim_per_file)
    except UnparseableError:
        raise SkipRecord(f"unparseable {language} file") from None
    if not samples:
        raise SkipRecord("no maskable node within the size bounds")
    docs = []
    for sample in samples:
        if ctx.rng.random() < o.ast_fim_chat_rate:
            messages = fim_conversation(sample)
            if messages is None:
                ctx.count("ast_fim_no_free_placeholder")
                continue
            segments, rendering = render_segments(normalize_messages(messages), ctx.tokenizer,
                                                  ctx.resources["system_prompt"]), "chat"
        else:
            segments, rendering = fim_segments(sample, ctx.tokenizer), "fim"
        fitted, _ = fit_segments(segments, _max_tokens(o), "drop")
        if fitted is None:
            ctx.count("ast_fim_dropped_overlong")
            continue
        for name in ("fim_documents", "ast_fim_samples", f"ast_fim:{sample.span.category}",
                     f"ast_fim_format:{rendering}", f"ast_fim_language:{language}"):
            ctx.count(name)
        docs.append(Document(_pieces(fitted)))
    if not docs:
        raise SkipRecord("no AST-FIM sample fits")
    return docs


def dpo(record: dict, ctx: ModeContext) -> list[Document]:
    """One preference pair per record -> one document of two sequences: prompt+chosen, prompt+rejected."""
    _check_filters(record, ctx, PAIR_FIELDS)
    try:
        chosen, rejected = encode_pair(record, ctx.tokenizer, ctx.resources["system_prompt"])
    except ChatFormatError as e:
        raise SkipRecord(_reason(e)) from None
    fitted, outcome = fit_pair(chosen, rejected, _max_tokens(ctx.options), ctx.options.sft_overlong)
    if fitted is None:
        raise SkipRecord("over-long pair dropped")
    if outcome != "fits":
        ctx.count(f"dpo_{outcome}")
    return [Document(_pieces(fitted[0]) + _pieces(fitted[1], new_sequence=True))]


def add_post_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("post-training (sft, sft-fim, dpo)")
    g.add_argument("--system-prompt", default="auto",
                   help="system message for conversations without one: 'auto' (what the tokenizer's chat "
                        "template inserts), 'none', or the text itself")
    g.add_argument("--sft-seq-length", type=int, default=None,
                   help="the stage's sequence length S: sequences are kept to S+1 tokens (S positions after the shift)")
    g.add_argument("--sft-overlong", choices=("truncate", "drop"), default="truncate",
                   help="over-long conversations/pairs: keep whole turns that fit (else cut) or drop them")
    g.add_argument("--score-field", default="score", help="record field read by --min-score")
    g.add_argument("--min-score", type=float, default=None,
                   help="rejection-sampling filter: keep records whose score field is >= this")
    f = parser.add_argument_group("sft-fim (AST-based FIM instruction samples)")
    f.add_argument("--ast-fim-per-file", type=int, default=1, help="samples per source file (distinct nodes)")
    f.add_argument("--ast-fim-chat-rate", type=float, default=1.0,
                   help="share of samples rendered as conversations; the rest use the FIM token format")
    f.add_argument("--ast-fim-weights", default=",".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items()),
                   help="category weights of the masked node")
    f.add_argument("--ast-fim-min-bytes", type=int, default=8, help="smallest masked node, in bytes")
    f.add_argument("--ast-fim-max-bytes", type=int, default=4096, help="largest masked node, in bytes")
    f.add_argument("--ast-fim-max-file-bytes", type=int, default=100_000, help="skip larger source files")
    f.add_argument("--ast-fim-lang", default=None,
                   help="language of records without 'lang'/'language' or a known 'path' extension")


def prepare_post(options: argparse.Namespace, tokenizer, sample_records=None) -> dict:
    """Check the options once and resolve the system prompt (and the AST-FIM span config)."""
    if options.sft_seq_length is not None and options.sft_seq_length < 1:
        raise ValueError(f"--sft-seq-length must be >= 1, got {options.sft_seq_length}")
    system = None if options.system_prompt.strip().lower() == "none" else options.system_prompt
    resources = {"system_prompt": resolve_system_prompt(system, tokenizer)}
    if options.mode == "sft-fim":
        if not 0.0 <= options.ast_fim_chat_rate <= 1.0:
            raise ValueError(f"--ast-fim-chat-rate must be in [0, 1], got {options.ast_fim_chat_rate}")
        if options.ast_fim_per_file < 1:
            raise ValueError(f"--ast-fim-per-file must be >= 1, got {options.ast_fim_per_file}")
        if not 1 <= options.ast_fim_min_bytes <= options.ast_fim_max_bytes:
            raise ValueError("need 1 <= --ast-fim-min-bytes <= --ast-fim-max-bytes, got "
                             f"{options.ast_fim_min_bytes} and {options.ast_fim_max_bytes}")
        if options.ast_fim_lang is not None and language_of(lang=options.ast_fim_lang) is None:
            raise ValueError(f"--ast-fim-lang {options.ast_fim_lang!r} is not one of python, java, javascript, cpp")
        resources["span_config"] = SpanConfig(parse_weights(options.ast_fim_weights), options.ast_fim_min_bytes,
                                              options.ast_fim_max_bytes)
    return resources


_COMMON = dict(loss_mask=True, add_arguments=add_post_arguments, prepare=prepare_post, decontam_self=True)
register_mode("sft", sft, required_tokens=CHAT_TOKENS, **_COMMON)
register_mode("sft-fim", sft_fim, required_tokens=(*CHAT_TOKENS, EOD_TOKEN, *FIM_TOKENS), **_COMMON)
register_mode("dpo", dpo, required_tokens=CHAT_TOKENS, **_COMMON)
