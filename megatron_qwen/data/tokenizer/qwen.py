"""One tokenizer object for every data path: load a Hugging Face tokenizer directory, expose the control ids.

Why it exists: the document formats (docs/formats.md) are built by encoding raw text pieces and inserting the
control ids ourselves. In the real Qwen tokenizer the FIM/repo tokens are *not* special, so calling the
Hugging Face tokenizer on a source file that contains the text `<|fim_prefix|>` would silently emit the
control id. `encode_raw` therefore never parses added tokens: it runs the model's own normalizer,
pre-tokenizer and BPE with the added-token table removed. The directory is read with `tokenizers` alone
(`files.py`: no transformers, no torch); a fast Rust encoder (gigatoken, else tiktoken) built from the same
files is used only after it has been shown token-identical to that path on a probe set at load time (see
`fast_encoder.py`). `.hf` (the transformers tokenizer, for chat templates) loads on first use.

Contract other modules rely on: `load_tokenizer(path) -> QwenTokenizer` with `.vocab_size`, `.eod`,
`.token_id(text)`, `.encode_raw(text)`, `.encode_raw_batch(texts)`, `.encode_raw_flat(texts)`,
`.decode(ids)`, `.hf`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from megatron_qwen.data.formats.text import no_surrogates
from megatron_qwen.data.tokenizer.arrays import flatten
from megatron_qwen.data.tokenizer.fast_encoder import choose_encoder, line_start_is_boundary, token_nbytes
from megatron_qwen.data.tokenizer.files import TokenizerFiles, read_tokenizer_files

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

    def __init__(self, files: TokenizerFiles):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(files.spec_json())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(no_surrogates(text), add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch([no_surrogates(t) for t in texts], add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def encode_flat(self, texts: Sequence[str], parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        return flatten(self.encode_batch(texts))


class QwenTokenizer:
    """A loaded tokenizer: raw-text encoding (never producing control ids), control ids, decoding."""

    def __init__(self, files: TokenizerFiles, fast: bool = True):
        self.path = files.path
        self.files = files
        self._added = dict(files.added)
        self.vocab_size = files.vocab_size
        self._encoder = choose_encoder(files, lambda: self._hf_raw, record=True) if fast else self._hf_raw
        self.eod = self.token_id(EOD_TOKEN)
        self.line_start_is_boundary = line_start_is_boundary(files.spec)

    @functools.cached_property
    def _hf_raw(self) -> _HFRawEncoder:
        """The exact raw-text encoder (the fast path's fallback and reference), built on first use."""
        return _HFRawEncoder(self.files)

    @functools.cached_property
    def hf(self):
        """The transformers tokenizer of the directory (chat templates); imports transformers on first use."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except Exception as e:  # transformers raises many types; name the directory either way
            raise ValueError(f"could not load a Hugging Face tokenizer from {self.path}: {e}") from e

    @functools.cached_property
    def _decoder(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.files.spec_json(with_added=True))

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

    @functools.cached_property
    def token_nbytes(self) -> np.ndarray | None:
        """UTF-8 bytes of text each ordinary id stands for (fast paths only; None on the HF path)."""
        return None if self._encoder.name == "hf" else token_nbytes(self.files.spec)

    @property
    def encoder_name(self) -> str:
        """`gigatoken` or `tiktoken` when a verified fast path is active, `hf` otherwise."""
        return self._encoder.name

    # -- encoding ------------------------------------------------------------------------------------
    def encode_raw_np(self, text: str) -> np.ndarray:
        """Ordinary text -> int32 ids; literal control-token text stays text."""
        return self._encoder.encode(text)

    def encode_raw_batch_np(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encoder.encode_batch(texts)

    def encode_raw_flat(self, texts: Sequence[str], parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids in one int32 array, plus int64 offsets (text k is tokens[offsets[k]:offsets[k+1]]).
        `parallel=False` keeps the encoding on this thread (for callers running one batch per thread)."""
        return self._encoder.encode_flat(texts, parallel)

    def encode_raw(self, text: str) -> list[int]:
        return self.encode_raw_np(text).tolist()

    def encode_raw_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [a.tolist() for a in self.encode_raw_batch_np(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._decoder.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"QwenTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, encoder={self.encoder_name})"


_LOADED: dict[tuple[str, bool], QwenTokenizer] = {}


def load_tokenizer(path: str | Path, *, fast: bool = True, require: Iterable[str] = (EOD_TOKEN,)) -> QwenTokenizer:
    """Load a Hugging Face tokenizer directory offline and check the control tokens `require` names.

    Loading takes about a second the first time (the fast encoder, and the Hugging Face reference that answers
    the exactness probes; later runs read its answers from probe_record.py's cache and build it only on use),
    so a process keeps one instance per (directory, fast) and returns it again.
    """
    path = Path(path)
    key = (str(path.resolve()), fast)
    if key not in _LOADED:
        _LOADED[key] = QwenTokenizer(read_tokenizer_files(path), fast=fast)
    _LOADED[key].require(require, purpose="the requested formats")
    return _LOADED[key]
