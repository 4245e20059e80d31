"""Sentence splitting for `text`/`math` modes: NLTK Punkt trained on the input itself.

Why it exists: Megatron-LM's `--split-sentences` stores each sentence as its own sequence inside a
document, using a Punkt model downloaded from NLTK's data server. Nothing may be downloaded here, and Punkt
is unsupervised anyway, so we train its parameters on (the first part of) the input being processed and
split with those. `keep_newlines` keeps the whitespace between sentences (newlines included) attached to
the end of the previous sentence, so the sentences of a document concatenate back to its text.
"""

from __future__ import annotations

from collections.abc import Iterable

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer


def train_punkt(texts: Iterable[str], max_chars: int = 20_000_000) -> PunktParameters:
    """Punkt parameters learned from up to `max_chars` characters of `texts`."""
    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    seen = 0
    for text in texts:
        if seen >= max_chars:
            break
        piece = text[: max_chars - seen]
        trainer.train(piece, finalize=False)
        seen += len(piece)
    trainer.finalize_training()
    return trainer.get_params()


class SentenceSplitter:
    """Splits text into sentences with given Punkt parameters."""

    def __init__(self, params: PunktParameters, keep_newlines: bool = False):
        self._punkt = PunktSentenceTokenizer(params)
        self.keep_newlines = keep_newlines

    def split(self, text: str) -> list[str]:
        if not self.keep_newlines:
            return self._punkt.tokenize(text)
        spans = list(self._punkt.span_tokenize(text))
        if not spans:
            return []
        ends = [start for start, _ in spans[1:]] + [len(text)]
        return [text[start:end] for (start, _), end in zip(spans, ends)]
