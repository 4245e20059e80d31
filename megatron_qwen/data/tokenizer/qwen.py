"""One tokenizer object for every data path: load a Hugging Face tokenizer directory, expose the control ids.

Why it exists: the document formats (docs/formats.md) are built by encoding raw text pieces and inserting the
control ids ourselves. In the real Qwen tokenizer the FIM/repo tokens are *not* special, so calling the
Hugging Face tokenizer on a source file that contains the text `<|fim_prefix|>` would silently emit the
control id. `encode_raw` therefore never parses added tokens: it runs the model's own normalizer,
pre-tokenizer and BPE with the added-token table removed. For byte-level BPE tokenizers shaped like
Qwen2's, a tiktoken encoder built from the same vocabulary does the same job several times faster; it
is used only after it has been shown token-identical to the Hugging Face path on a probe set at load
time (see `fast_encoder.py`).

Contract other modules rely on: `load_tokenizer(path) -> QwenTokenizer` with `.vocab_size`, `.eod`,
`.token_id(text)`, `.encode_raw(text)`, `.encode_raw_batch(texts)`, `.decode(ids)`, `.hf`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from megatron_qwen.data.formats.text import no_surrogates

log = logging.getLogger(__name__)

EOD_TOKEN = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_PAD = "<|fim_pad|>"
REPO_NAME = "<|repo_name|>"
FILE_SEP = "<|file_sep|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)
REPO_TOKENS = (REPO_NAME, FILE_SEP)
CHAT_TOKENS = (IM_START, IM_END)


class MissingTokenError(KeyError):
    """A control token that a document format needs is absent from the tokenizer."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class _HFRawEncoder:
    """The Hugging Face tokenizer's normalizer + pre-tokenizer + model, with its added tokens removed."""

    name = "hf"

    def __init__(self, hf_tokenizer):
        from tokenizers import Tokenizer

        spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
        spec["added_tokens"] = []
        spec["post_processor"] = None  # no BOS/EOS templates: raw pieces only
        spec["truncation"] = None
        spec["padding"] = None
        self._tok = Tokenizer.from_str(json.dumps(spec))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(no_surrogates(text), add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch([no_surrogates(t) for t in texts], add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]



class QwenTokenizer:
    """A loaded tokenizer: raw-text encoding (never producing control ids), control ids, decoding."""

    def __init__(self, path: Path, hf_tokenizer, fast: bool = True):
        self.path = Path(path)
        self.hf = hf_tokenizer
        self._added = {t.content: i for i, t in hf_tokenizer.added_tokens_decoder.items()}
        self.vocab_size = len(hf_tokenizer)
        self._hf_raw = _HFRawEncoder(hf_tokenizer)
        self._encoder = self._hf_raw
        if fast:
            from megatron_qwen.data.tokenizer.fast_encoder import try_fast_encoder

            self._encoder = try_fast_encoder(hf_tokenizer, self._hf_raw, source=str(self.path)) or self._hf_raw
        self.eod = self.token_id(EOD_TOKEN)
        from megatron_qwen.data.tokenizer.fast_encoder import line_start_is_boundary

        self.line_start_is_boundary = line_start_is_boundary(hf_tokenizer)

    # -- control tokens ------------------------------------------------------------------------------
    def token_id(self, text: str) -> int:
        """Id of an added control token such as `<|fim_prefix|>`; a clear error if the tokenizer lacks it."""
        if text in self._added:
            return self._added[text]
        raise MissingTokenError(
            f"tokenizer {self.path} has no added token {text!r} (needed by the document format); "
            f"its added tokens are: {sorted(self._added, key=self._added.get)}"
        )

    def require(self, tokens: Iterable[str], purpose: str = "this format") -> None:
        """Fail before any work starts if a format's control tokens are missing."""
        missing = [t for t in tokens if t not in self._added]
        if missing:
            raise MissingTokenError(
                f"tokenizer {self.path} lacks {missing} needed by {purpose}; "
                f"its added tokens are: {sorted(self._added, key=self._added.get)}"
            )

    @property
    def control_ids(self) -> frozenset[int]:
        return frozenset(self._added.values())

    @property
    def token_nbytes(self) -> np.ndarray | None:
        """UTF-8 bytes of text each ordinary id stands for (fast path only; None on the HF path)."""
        return getattr(self._encoder, "token_nbytes", None)

    @property
    def encoder_name(self) -> str:
        """`tiktoken` when the verified fast path is active, `hf` otherwise."""
        return self._encoder.name

    # -- encoding ------------------------------------------------------------------------------------
    def encode_raw_np(self, text: str) -> np.ndarray:
        """Ordinary text -> int32 ids; literal control-token text stays text."""
        return self._encoder.encode(text)

    def encode_raw_batch_np(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encoder.encode_batch(texts)

    def encode_raw(self, text: str) -> list[int]:
        return self.encode_raw_np(text).tolist()

    def encode_raw_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [a.tolist() for a in self.encode_raw_batch_np(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def __repr__(self) -> str:
        return f"QwenTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, encoder={self.encoder_name})"


_LOADED: dict[tuple[str, bool], QwenTokenizer] = {}


def load_tokenizer(path: str | Path, *, fast: bool = True, require: Iterable[str] = (EOD_TOKEN,)) -> QwenTokenizer:
    """Load a Hugging Face tokenizer directory offline and check the control tokens `require` names.

    Loading takes seconds (transformers builds the BPE from vocab.json/merges.txt), so a process keeps
    one instance per (directory, fast) and returns it again.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    key = (str(path.resolve()), fast)
    if key in _LOADED:
        _LOADED[key].require(require, purpose="the requested formats")
        return _LOADED[key]
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types; name the directory either way
        raise ValueError(f"could not load a Hugging Face tokenizer from {path}: {e}") from e
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"tokenizer in {path} has no fast (Rust `tokenizers`) backend; one is required")
    tok = QwenTokenizer(path, hf, fast=fast)
    tok.require(require, purpose="the requested formats")
    _LOADED[key] = tok
    return tok
