"""A tiktoken encoder built from a Hugging Face byte-level BPE, used only where it is proven identical.

Why it exists: preprocessing is bound by tokenization. For tokenizers shaped like Qwen2's (NFC
normalizer, one `Split` regex, `ByteLevel` without its own regex, a BPE whose merge order follows the
token ids) tiktoken's Rust BPE gives the same tokens several times faster than `tokenizers`, and releases
the GIL so it scales over threads. "Shaped like" is checked structurally, then the encoders are compared
on a probe set of awkward strings; any mismatch falls back to Hugging Face with a warning.
"""

from __future__ import annotations

import json
import logging
import unicodedata
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from megatron_qwen.data.formats.text import no_surrogates as _no_surrogates

log = logging.getLogger(__name__)

# GPT-2's ByteLevel pre-tokenizer regex, used when ByteLevel(use_regex=True) does the splitting.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Patterns for which a newline followed by a non-whitespace character always ends a pre-token: no
# alternative can start at "\n" and continue past it except into more whitespace, and whitespace runs that
# contain a newline end right after their last newline. Text after such a line start then encodes the
# same whatever precedes or follows it (see `line_start_is_boundary`).
LINE_SAFE_PATTERNS = (GPT2_PATTERN, QWEN2_PATTERN)

PROBES: tuple[str, ...] = (
    "Hello world",
    "def f(x):\n    return x + 1\n\n\n",
    "  leading and trailing spaces   ",
    "\t\ttabs\tand\r\nCRLF\r\n\r\n",
    "numbers 1234567890 3.14159 1e-9 0xDEADBEEF",
    "I'm you're they've he'll she'd IT'S WE'RE",
    "unicode: naïve café résumé Straße ΑΒΓ δέλτα кириллица",
    "CJK: 你好，世界。日本語のテキスト。한국어 텍스트",
    "emoji: 🙂👍🏽👨‍👩‍👧 ❤️",
    "combining: e\u0301 a\u0308 n\u0303 (NFD input)",
    "odd spaces:\u00a0nbsp\u2003em\u3000ideographic\u2028line\u0085nel\u200bzw",
    "control tokens as text: <|fim_prefix|> <|endoftext|> <|im_start|>user",
    "symbols: !@#$%^&*()_+-=[]{}|;':\",./<>?`~ ===> ->> ::",
    "    \n        \n",
    "x" * 300 + " " + "ab" * 200,
    "mixed123abc456 foo_bar.baz() __init__ self.__dict__",
    "Ωmega ǅ ᾈ ﬁ ligature ＡＢＣ fullwidth",
    "\x00\x01\x7f bytes",
    "#include <stdio.h>\nint main(){printf(\"%d\\n\", 42);}\n",
    "a\n\n\nb \n c  \n\n  d",
)


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE vocabularies (GPT-2's convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pattern_of(spec: dict) -> str | None:
    """The split regex if the pre-tokenizer is [Split(regex, Isolated), ByteLevel(no regex)] or ByteLevel(regex)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return None if steps[0].get("add_prefix_space") else GPT2_PATTERN
    if len(steps) != 2:
        return None
    split, byte_level = steps
    if split.get("type") != "Split" or byte_level.get("type") != "ByteLevel":
        return None
    if split.get("behavior") != "Isolated" or split.get("invert") or byte_level.get("use_regex", True):
        return None
    if byte_level.get("add_prefix_space"):
        return None
    return split.get("pattern", {}).get("Regex")


def line_start_is_boundary(hf_tokenizer) -> bool:
    """True if encode(a + b) == encode(a) + encode(b) whenever b starts a line with a non-space character."""
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    return spec.get("normalizer") in (None, {"type": "NFC"}) and _pattern_of(spec) in LINE_SAFE_PATTERNS


def _ranks_of(model: dict) -> dict[bytes, int] | None:
    """Byte-string ranks (= ids) if merge priority follows the ids and every single byte has a token."""
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    decode = {c: b for b, c in bytes_to_unicode().items()}
    vocab: dict[str, int] = model["vocab"]
    try:
        ranks = {bytes(decode[c] for c in tok): i for tok, i in vocab.items()}
    except KeyError:
        return None  # a token with a character outside the byte table: not byte-level
    if len(ranks) != len(vocab) or any(bytes([b]) not in ranks for b in range(256)):
        return None
    last = -1
    for merge in model.get("merges", []):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        merged = vocab.get(a + b)
        if merged is None or merged <= last or merged <= vocab.get(a, -1) or merged <= vocab.get(b, -1):
            return None
        last = merged
    return ranks


class TiktokenEncoder:
    """NFC (when the tokenizer normalizes that way) + tiktoken ordinary encoding to int32 numpy arrays."""

    name = "tiktoken"

    # tiktoken's numpy path scans for special tokens; with none registered it degenerates into an empty-regex
    # search at every character. One sentinel that is never allowed keeps that scan fast and never fires
    # (disallowed_special=() makes a literal occurrence plain text).
    SENTINEL = "<|megatron-qwen-unused\x00|>"

    def __init__(self, pattern: str, ranks: dict[bytes, int], nfc: bool, threads: int = 1):
        import tiktoken

        self._enc = tiktoken.Encoding("hf-byte-level-bpe", pat_str=pattern, mergeable_ranks=ranks,
                                      special_tokens={self.SENTINEL: max(ranks.values()) + 1})
        self._nfc = nfc
        self.threads = threads
        self.token_nbytes = np.zeros(max(ranks.values()) + 1, dtype=np.int64)  # bytes each id stands for
        for token, rank in ranks.items():
            self.token_nbytes[rank] = len(token)

    def _prepare(self, text: str) -> str:
        if self._nfc and not unicodedata.is_normalized("NFC", text):
            return unicodedata.normalize("NFC", text)
        return text

    def encode(self, text: str) -> np.ndarray:
        text = self._prepare(text)
        try:
            out = self._enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates (from JSON escapes) become U+FFFD, as in the HF path
            out = self._enc.encode_to_numpy(_no_surrogates(text), disallowed_special=())
        return out.view(np.int32)  # ids < 2**31: reinterpret tiktoken's uint32 buffer without a copy

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        if self.threads <= 1 or len(texts) < 2:
            return [self.encode(t) for t in texts]
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(self.encode, texts))


def build_fast_encoder(hf_tokenizer) -> TiktokenEncoder | None:
    """A TiktokenEncoder for this tokenizer, or None (with the reason logged) if its shape does not fit."""
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    normalizer = spec.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        log.info("fast encoder not used: normalizer %s is not NFC/None", normalizer)
        return None
    pattern = _pattern_of(spec)
    if pattern is None:
        log.info("fast encoder not used: pre-tokenizer is not a single Split regex + ByteLevel")
        return None
    ranks = _ranks_of(spec.get("model", {}))
    if ranks is None:
        log.info("fast encoder not used: the model is not a byte-level BPE with id-ordered merges")
        return None
    try:
        return TiktokenEncoder(pattern, ranks, nfc=normalizer is not None)
    except Exception as e:  # a regex tiktoken's engine rejects, for example
        log.info("fast encoder not used: tiktoken refused the tokenizer: %s", e)
        return None


def first_mismatch(fast, reference, probes: Sequence[str] = PROBES) -> str | None:
    """The first probe on which the two encoders disagree, or None if they agree on all."""
    for text in probes:
        if not np.array_equal(fast.encode(text), reference.encode(text)):
            return text
    return None


def try_fast_encoder(hf_tokenizer, reference, source: str = "") -> TiktokenEncoder | None:
    """Build the fast encoder and prove it equal to `reference` on the probes; None (and a warning) otherwise."""
    fast = build_fast_encoder(hf_tokenizer)
    if fast is None:
        return None
    bad = first_mismatch(fast, reference)
    if bad is not None:
        warnings.warn(
            f"tiktoken fast path differs from the Hugging Face tokenizer {source} on {bad!r}; "
            "falling back to Hugging Face encoding (slower, exact)",
            stacklevel=2,
        )
        return None
    return fast
