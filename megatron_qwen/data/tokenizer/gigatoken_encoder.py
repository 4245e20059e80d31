"""gigatoken's Rust byte-level BPE as an encoder: whole batches in, one flat int32 array + offsets out.

Why it exists: gigatoken encodes the Qwen2 tokenizer an order of magnitude faster than tiktoken, and
batches across its own thread pool (sequentially inside forked worker processes, where a pool would
oversubscribe the cores). It is loaded from the spec with the added tokens removed, so literal control
text such as `<|endoftext|>` stays text, and `fast_encoder.choose_encoder` proves it equal to Hugging
Face before it is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_qwen.data.formats.text import no_surrogates


class GigatokenEncoder:
    name = "gigatoken"
    SMALL_BATCH = 64

    def __init__(self, spec_json: str):
        import gigatoken
        from gigatoken.gigatoken_rs import load_hf_json

        self._tok = gigatoken.Tokenizer(load_hf_json(spec_json))

    def encode(self, text: str) -> np.ndarray:
        try:
            out = self._tok.encode(text)
        except (TypeError, UnicodeEncodeError):  # lone surrogates (JSON escapes) become U+FFFD, as in HF
            out = self._tok.encode(no_surrogates(text))
        return out.view(np.int32)  # ids < 2**31: reinterpret the uint32 buffer

    def encode_flat(self, texts: Sequence[str], parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All ids of `texts` in one int32 array, and the int64 offsets of each text (len(texts) + 1).

        `parallel`: None = gigatoken's thread pool for batches of more than SMALL_BATCH texts (never inside
        forked workers); False = this thread only (for callers that run one batch per thread themselves)."""
        if not texts:
            return np.zeros(0, np.int32), np.zeros(1, np.int64)
        texts = texts if isinstance(texts, list) else list(texts)
        # gigatoken's own thread pool only for real batches (and never inside forked workers: None = auto);
        # small ones, such as the load-time probes, stay on this thread, so no pool exists before a fork
        parallel = parallel if len(texts) > self.SMALL_BATCH else False
        try:
            layout = self._tok.encode_batch(texts, parallel=parallel).layout
        except (TypeError, UnicodeEncodeError):
            layout = self._tok.encode_batch([no_surrogates(t) for t in texts], parallel=parallel).layout
        offsets = np.asarray(layout.offsets, dtype=np.int64)
        tokens = np.asarray(layout.content.data)[offsets[0]:offsets[-1]].view(np.int32)
        return tokens, offsets - offsets[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        tokens, offsets = self.encode_flat(texts)
        return [tokens[offsets[k]:offsets[k + 1]] for k in range(len(texts))]
