"""Read a Hugging Face tokenizer directory into a `tokenizer.json`-shaped spec, without `transformers`.

Why it exists: importing transformers (and through it torch) costs seconds, more than preprocessing a
small corpus. Every encoder here needs only the spec: `tokenizer.json` when the directory has one, or,
for Qwen2-family directories that ship only `vocab.json` + `merges.txt`, the same pipeline transformers'
`Qwen2Tokenizer` builds from them (NFC, the Qwen2 split regex, byte-level BPE). The added (control)
tokens come from `tokenizer.json` and from `tokenizer_config.json`'s `added_tokens_decoder`.

Contract: `read_tokenizer_files(path) -> TokenizerFiles` with `.spec` (dict, added tokens removed),
`.added` (content -> id), `.vocab_size` (one past the largest id, added tokens included), and for chat
templates `.chat_template` (the default template as transformers picks it: `chat_template.jinja`, else
tokenizer_config.json's entry) and `.special_tokens` (bos/eos/... as strings, the template's variables).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer_config.json classes whose vocab.json + merges.txt transformers turns into the pipeline below.
QWEN2_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")


@dataclass(frozen=True)
class TokenizerFiles:
    path: Path
    spec: dict  # tokenizer.json layout, "added_tokens" emptied: raw text only
    added: dict[str, int]  # control-token content -> id
    vocab_size: int
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)  # e.g. {"eos_token": "<|endoftext|>"}

    @functools.cached_property
    def _raw_json(self) -> str:  # the reference and the fast encoder are both built from it
        return _dumps(self.spec)

    def spec_json(self, with_added: bool = False) -> str:
        """The spec as JSON; `with_added` puts the added tokens back (for decoding)."""
        if not with_added:
            return self._raw_json
        spec = self.spec
        if with_added:
            spec = {**spec, "added_tokens": [
                {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for c, i in sorted(self.added.items(), key=lambda x: x[1])]}
        return _dumps(spec)


try:  # vocab.json and the spec are megabytes: orjson reads and writes them several times faster
    import orjson

    def _loads(data: bytes):
        return orjson.loads(data)

    def _dumps(obj) -> str:
        return orjson.dumps(obj).decode("utf-8")
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    def _loads(data: bytes):
        return json.loads(data)

    def _dumps(obj) -> str:
        return json.dumps(obj, ensure_ascii=False)


def _read_json(path: Path) -> dict:
    try:
        return _loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"could not read {path}: {e}") from e


def qwen2_spec(vocab: dict[str, int], merges: list[str]) -> dict:
    """What transformers' Qwen2Tokenizer builds from vocab.json and merges.txt, as a tokenizer.json dict."""
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def _read_merges(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().split("\n")]  # byte-level tokens hold no whitespace
    if lines and lines[0].startswith("#version"):  # the header transformers skips
        lines = lines[1:]
    return [line for line in lines if line]


def read_tokenizer_files(path: str | Path) -> TokenizerFiles:
    """The spec and control tokens of a tokenizer directory; clear errors naming the directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    added: dict[str, int] = {}
    if (path / "tokenizer.json").is_file():
        spec = _read_json(path / "tokenizer.json")
        added.update({t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []})
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        cls = config.get("tokenizer_class")
        if cls not in QWEN2_CLASSES:
            raise ValueError(f"tokenizer in {path} has no tokenizer.json, and its tokenizer_class {cls!r} is not "
                             f"one whose vocab.json + merges.txt can be read without transformers ({QWEN2_CLASSES})")
        spec = qwen2_spec(_read_json(path / "vocab.json"), _read_merges(path / "merges.txt"))
    else:
        raise ValueError(f"could not load a tokenizer from {path}: no tokenizer.json, nor vocab.json + merges.txt")
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        added.setdefault(entry["content"], int(key))
    spec = {**spec, "added_tokens": []}
    vocab = (spec.get("model") or {}).get("vocab") or {}
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
    return TokenizerFiles(path, spec, added, len(ids | set(added.values())), _chat_template(path, config),
                          _special_tokens(config))


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _special_tokens(config: dict) -> dict[str, str]:
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def _chat_template(path: Path, config: dict) -> str | None:
    """The default chat template: chat_template.jinja wins over tokenizer_config.json's `chat_template` (a
    string, or a list of named templates of which "default" is used), as in transformers."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
