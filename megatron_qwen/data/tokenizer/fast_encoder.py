"""Fast encoders built from a Hugging Face byte-level BPE, used only where they are proven identical.

Why it exists: preprocessing is bound by tokenization. For tokenizers shaped like Qwen2's (NFC
normalizer, one `Split` regex, `ByteLevel` without its own regex, a BPE whose merge order follows the
token ids) two Rust BPEs give the same tokens many times faster than `tokenizers`: gigatoken (tried
first, `gigatoken_encoder.py`) and tiktoken (this file). "Shaped like" is checked structurally, then each
candidate is compared with the Hugging Face encoder on a probe set of awkward strings (one by one and as
one batch); a candidate that differs is dropped with one warning, and the next one is tried, down to
Hugging Face itself. The Hugging Face answers to the probes are recorded per tokenizer (probe_record.py),
so later starts run the candidate on every probe without building the reference. Candidates get the spec
with its added tokens removed, so literal control-token text stays text (a probe checks that too).

Every encoder offers `encode(text)`, `encode_batch(texts)` (a list of int32 arrays) and
`encode_flat(texts)` (all ids in one int32 array plus int64 offsets, `len(texts) + 1` of them).
"""

from __future__ import annotations

import logging
import unicodedata
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from megatron_qwen.data.formats.text import no_surrogates as _no_surrogates
from megatron_qwen.data.tokenizer import probe_record
from megatron_qwen.data.tokenizer.arrays import flatten
from megatron_qwen.data.tokenizer.files import QWEN2_PATTERN, TokenizerFiles

log = logging.getLogger(__name__)

# GPT-2's ByteLevel pre-tokenizer regex, used when ByteLevel(use_regex=True) does the splitting.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
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


def line_start_is_boundary(spec: dict) -> bool:
    """True if encode(a + b) == encode(a) + encode(b) whenever b starts a line with a non-space character."""
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


def token_nbytes(spec: dict) -> np.ndarray | None:
    """UTF-8 bytes of text each ordinary id stands for (a byte-level vocabulary: one character per byte)."""
    vocab = (spec.get("model") or {}).get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        return None
    out = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    out[np.fromiter(vocab.values(), np.int64, len(vocab))] = np.fromiter(map(len, vocab), np.int64, len(vocab))
    return out


def fast_shape(spec: dict) -> str | None:
    """The split regex if the spec is shaped like Qwen2's (see the module docstring), else None (logged)."""
    normalizer = spec.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        log.info("fast encoders not used: normalizer %s is not NFC/None", normalizer)
        return None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        log.info("fast encoders not used: the model is not a byte-level BPE")
        return None
    pattern = _pattern_of(spec)
    if pattern is None:
        log.info("fast encoders not used: pre-tokenizer is not a single Split regex + ByteLevel")
    return pattern


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

    def encode_flat(self, texts: Sequence[str], parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        if parallel is False:
            return flatten([self.encode(t) for t in texts])
        return flatten(self.encode_batch(texts))


def build_tiktoken_encoder(files: TokenizerFiles) -> TiktokenEncoder | None:
    """A TiktokenEncoder for this tokenizer, or None (with the reason logged) if its shape does not fit."""
    pattern = fast_shape(files.spec)
    if pattern is None:
        return None
    ranks = _ranks_of(files.spec.get("model", {}))
    if ranks is None:
        log.info("tiktoken not used: the model is not a byte-level BPE with id-ordered merges")
        return None
    try:
        return TiktokenEncoder(pattern, ranks, nfc=files.spec.get("normalizer") is not None)
    except Exception as e:  # a regex tiktoken's engine rejects, for example
        log.info("tiktoken not used: it refused the tokenizer: %s", e)
        return None


def build_gigatoken_encoder(files: TokenizerFiles):
    """A GigatokenEncoder for this tokenizer, or None (with the reason logged)."""
    if fast_shape(files.spec) is None:
        return None
    try:
        from megatron_qwen.data.tokenizer.gigatoken_encoder import GigatokenEncoder

        return GigatokenEncoder(files.spec_json())
    except Exception as e:  # not installed, or a spec it cannot load
        log.info("gigatoken not used: %s", e)
        return None


# The candidates, fastest first; each is a function TokenizerFiles -> encoder or None.
CANDIDATES = (build_gigatoken_encoder, build_tiktoken_encoder)


def first_mismatch(fast, expected: Sequence[np.ndarray], probes: Sequence[str] = PROBES) -> str | None:
    """The first probe whose ids from `fast` (one by one, or in one batch) differ from `expected`, or None."""
    for text, ids in zip(probes, expected, strict=True):
        if not np.array_equal(fast.encode(text), ids):
            return text
    tokens, offsets = fast.encode_flat(probes)
    for k, (text, ids) in enumerate(zip(probes, expected, strict=True)):
        if not np.array_equal(tokens[offsets[k]:offsets[k + 1]], ids):
            return text
    return None


def choose_encoder(files: TokenizerFiles, reference, candidates=CANDIDATES, record: bool = False):
    """The first candidate proven equal to the exact encoder on the probes (plus every control token's text,
    which must stay text), else the exact encoder itself; one warning naming every candidate that was built
    but differs.

    `reference` is the exact encoder, or a function that builds it: then it is built only when needed, as
    the fallback or to answer the probes when `record` finds no recorded answers (probe_record.py; with
    `record`, answers computed here are recorded for later runs)."""
    exact = reference if callable(reference) else lambda: reference
    probes = (*PROBES, " ".join(files.added) + "\n" + "".join(files.added))
    expected = probe_record.load(files.spec_json(), probes) if record else None
    chosen, failed = None, []
    for build in candidates:
        fast = build(files)
        if fast is None:
            continue
        if expected is None:
            expected = [exact().encode(text) for text in probes]
            if record:
                probe_record.save(files.spec_json(), probes, expected)
        bad = first_mismatch(fast, expected, probes)
        if bad is None:
            chosen = fast
            break
        failed.append(f"{fast.name} on {bad[:80]!r}")
    chosen = chosen or exact()
    if failed:
        warnings.warn(f"fast encoding differs from the Hugging Face tokenizer {files.path} ({'; '.join(failed)}); "
                      f"using {chosen.name} (exact)", stacklevel=2)
    return chosen
