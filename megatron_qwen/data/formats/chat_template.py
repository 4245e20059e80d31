"""Render a Hugging Face chat template the way transformers does, without importing transformers.

Why it exists: the SFT and DPO modes ask the tokenizer's own template which system message it inserts
(`chat.template_default_system`). Loading transformers for that one render costs ~5 s of every start
(torch comes with it). The template is jinja2 run in the environment transformers builds
(`transformers.utils.chat_template_utils`): a sandbox with `trim_blocks` and `lstrip_blocks`, loop
controls, a `tojson` that does not escape HTML, `raise_exception` and `strftime_now`, and the
tokenizer's special tokens (bos/eos/... as strings) as variables. A test renders conversations with both
and compares the text. Templates using transformers' `{% generation %}` tag are refused here (SFT does not
need the tag's token tracking; give the system prompt explicitly for such tokenizers).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime


class ChatTemplateError(ValueError):
    """The template cannot be rendered here; the message says why."""


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not compile here (line {e.lineno}): {e.message}") from e


def render_chat_template(template: str, messages: Sequence[Mapping], special_tokens: Mapping[str, str] | None = None,
                         add_generation_prompt: bool = False) -> str:
    """The text transformers' `apply_chat_template(messages, tokenize=False)` returns for this template."""
    return _compile(template).render(messages=list(messages), tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **dict(special_tokens or {}))
