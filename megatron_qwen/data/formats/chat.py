"""ChatML conversations -> token ids and a loss mask that covers exactly the assistant answers.

Why it exists: supervised fine-tuning (stage 3, docs/formats.md) trains on answers only. The Hugging Face chat
template gives the text of a conversation but not which tokens belong to which turn, and it parses
`<|im_start|>`/`<|im_end|>` written *inside* a message as control tokens. This module renders the same
ChatML layout as the tokenizer's template, piece by piece, and knows the role of every token:

    <|im_start|>{role}\\n{content}<|im_end|>\\n        (151644 ... 151645 198 in the real tokenizer)

Loss mask: 1 on the content tokens of every assistant turn and on the `<|im_end|>` that closes it (the
model must learn to stop); 0 on everything else, including the `<|im_start|>assistant\\n` header and the
`\\n` after `<|im_end|>`. An assistant message with `"weight": 0` (OpenAI's fine-tuning layout) gets no loss.

Token-for-token agreement with `tokenizer.apply_chat_template(messages)`:
- system/user turns are encoded as one piece `"{role}\\n{content}"`, exactly as the template's text is
  tokenized between control tokens;
- assistant turns encode the header `"assistant\\n"` and the content separately, because at generation
  time the model is prompted with `<|im_start|>assistant\\n` (ids ... 77091 198) and produces the content
  after it. This equals the template's ids unless the content starts with a newline (the template's text
  would merge `\\n\\n` into one token the model never sees at inference); we follow inference;
- message text is always encoded as text: a literal `<|im_end|>` inside a message stays text (the
  template would turn it into a control token, letting data forge turn boundaries).

System message: Qwen2.5's released instruct templates insert a default system message ("You are Qwen,
created by Alibaba Cloud. ...") when a conversation has none; other templates (such as the test
fixture's) insert nothing. `system_prompt="auto"` (the default) asks the tokenizer's own template what it
does (`template_default_system`), so training data looks exactly like what `apply_chat_template` feeds
the model at inference; `None` never inserts one; any other string is inserted as given.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_qwen.data.formats.chat_template import ChatTemplateError, render_chat_template
from megatron_qwen.data.tokenizer.qwen import IM_END, IM_START

ROLES = ("system", "user", "assistant")
AUTO = "auto"
_PROBE = "Probe message 7f3a."


class ChatFormatError(ValueError):
    """A conversation that does not have the OpenAI `messages` layout; the message names the field."""


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive tokens of one turn that share a loss value; `turn` is the message index (-1: inserted system)."""

    ids: np.ndarray
    loss: bool
    turn: int


def content_text(content, where: str) -> str:
    """A message's content as text: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ChatFormatError(f"{where}.content[{k}] is not a text part {{'type': 'text', 'text': ...}}")
            parts.append(part["text"])
        return "".join(parts)
    raise ChatFormatError(f"{where}.content is {type(content).__name__}, expected a string")


def normalize_messages(messages, field: str = "messages") -> list[dict]:
    """Validate a conversation and return `[{"role", "content", "loss"}]`; errors name the offending field."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError(f"field '{field}' must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise ChatFormatError(f"{where} is not an object")
        role = msg.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"{where}.role is {role!r}; supported roles: {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise ChatFormatError(f"{where} is a system message; only the first message may be one")
        if "content" not in msg:
            raise ChatFormatError(f"{where} has no 'content'")
        weight = msg.get("weight", 1)
        if weight not in (0, 1):
            raise ChatFormatError(f"{where}.weight is {weight!r}; expected 0 or 1")
        out.append({"role": role, "content": content_text(msg["content"], where),
                    "loss": role == "assistant" and weight == 1})
    return out


@functools.lru_cache(maxsize=8)
def template_default_system(template: str | None, special_tokens: tuple[tuple[str, str], ...] = ()) -> str | None:
    """The system message a chat template inserts into a conversation without one (None: none); the
    template is rendered as transformers renders it (chat_template.py), without importing transformers."""
    if not template:
        return None
    text = render_chat_template(template, [{"role": "user", "content": _PROBE}], dict(special_tokens))
    user_turn = f"{IM_START}user\n{_PROBE}{IM_END}\n"
    if text == user_turn:
        return None
    head = f"{IM_START}system\n"
    tail = f"{IM_END}\n{user_turn}"
    if text.startswith(head) and text.endswith(tail):
        return text[len(head):-len(tail)]
    raise ChatFormatError(f"the tokenizer's chat template is not ChatML (it renders a user message as {text!r}); "
                          "give the system prompt explicitly instead of 'auto'")


def resolve_system_prompt(system_prompt: str | None, tokenizer) -> str | None:
    """`"auto"` -> what the tokenizer's template inserts; None or a string -> itself."""
    if system_prompt != AUTO:
        return system_prompt
    files = tokenizer.files
    try:
        return template_default_system(files.chat_template, tuple(sorted(files.special_tokens.items())))
    except ChatTemplateError as e:
        raise ChatFormatError(f"tokenizer {files.path}: {e}; give the system prompt explicitly instead of "
                              "'auto'") from e


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def render_segments(messages: Sequence[dict], tokenizer, system_prompt: str | None = None) -> list[Segment]:
    """Normalized messages (see `normalize_messages`) -> ChatML segments; `system_prompt` is used only when
    the conversation has no system message (pass a resolved value, not "auto")."""
    im_start = _ids([tokenizer.token_id(IM_START)])
    im_end = _ids([tokenizer.token_id(IM_END)])
    newline = _ids(tokenizer.encode_raw("\n"))
    turns = list(enumerate(messages))
    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        turns.insert(0, (-1, {"role": "system", "content": system_prompt, "loss": False}))
    segments = []
    for turn, msg in turns:
        if msg["loss"]:
            segments.append(Segment(np.concatenate([im_start, _ids(tokenizer.encode_raw(f"{msg['role']}\n"))]),
                                    False, turn))
            segments.append(Segment(np.concatenate([_ids(tokenizer.encode_raw(msg["content"])), im_end]), True, turn))
            segments.append(Segment(newline, False, turn))
        else:
            body = _ids(tokenizer.encode_raw(f"{msg['role']}\n{msg['content']}"))
            segments.append(Segment(np.concatenate([im_start, body, im_end, newline]), False, turn))
    return segments


def render_text(messages: Sequence[dict], system_prompt: str | None = None) -> str:
    """The same conversation as ChatML text (what `apply_chat_template(..., tokenize=False)` returns)."""
    out = []
    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        out.append(f"{IM_START}system\n{system_prompt}{IM_END}\n")
    out.extend(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return "".join(out)


def to_arrays(segments: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Segments -> (int32 token ids, uint8 loss mask) of the same length."""
    if not segments:
        return np.zeros(0, np.int32), np.zeros(0, np.uint8)
    ids = np.concatenate([s.ids for s in segments])
    mask = np.concatenate([np.full(s.ids.size, s.loss, np.uint8) for s in segments])
    return ids, mask


def encode_conversation(messages, tokenizer, system_prompt: str | None = AUTO) -> tuple[np.ndarray, np.ndarray]:
    """Raw OpenAI-style messages -> (token ids, loss mask). The one call most users need."""
    norm = normalize_messages(messages)
    return to_arrays(render_segments(norm, tokenizer, resolve_system_prompt(system_prompt, tokenizer)))


# -- fitting a conversation to the stage's sequence length ----------------------------------------------
OVERLONG = ("truncate", "drop")


def _turn_ends(segments: Sequence[Segment]) -> list[int]:
    """Indices j such that segments[:j] ends exactly at a turn boundary."""
    return [j for j in range(1, len(segments) + 1) if j == len(segments) or segments[j].turn != segments[j - 1].turn]


def fit_segments(segments: list[Segment], max_tokens: int | None, overlong: str = "truncate"
                 ) -> tuple[list[Segment] | None, str]:
    """Make a conversation fit in `max_tokens`; returns (segments or None, outcome).

    Outcomes: `fits`; `truncated_turns` (the longest run of whole turns that ends with a trained answer);
    `truncated_tokens` (cut mid-turn, when not even the first answer fits whole but some answer tokens do);
    `dropped` (with `overlong="drop"`, or when no answer token would remain).
    """
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    sizes = [s.ids.size for s in segments]
    if max_tokens is None or sum(sizes) <= max_tokens:
        return segments, "fits"
    if overlong == "drop":
        return None, "dropped"
    cumulative = np.cumsum(sizes)
    for j in reversed(_turn_ends(segments)):
        last_turn = segments[j - 1].turn
        ends_with_answer = any(s.loss for s in segments[:j] if s.turn == last_turn)
        if cumulative[j - 1] <= max_tokens and ends_with_answer:
            return segments[:j], "truncated_turns"
    kept, room = [], max_tokens
    for seg in segments:
        if room <= 0:
            break
        kept.append(seg if seg.ids.size <= room else Segment(seg.ids[:room], seg.loss, seg.turn))
        room -= kept[-1].ids.size
    if not any(s.loss and s.ids.size for s in kept):
        return None, "dropped"
    return kept, "truncated_tokens"


# -- the rejection-sampling filter of the coarse-to-fine recipe ------------------------------------------
def score_rejection(record: dict, field: str, min_score: float | None) -> str | None:
    """None when the record passes (`record[field] >= min_score`, or no threshold set), else the reason."""
    if min_score is None:
        return None
    if field not in record:
        return f"missing score field '{field}'"
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"score field '{field}' is not a number"
    return None if value >= min_score else "score below threshold"
