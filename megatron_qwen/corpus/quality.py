"""Hierarchical quality filtering with small fastText classifiers (coarse to fine).

Why it exists: text-code grounding data (web pages about code) and code itself are filtered by a chain
of classifiers, each trained from positive and negative seed documents (`megatron-qwen corpus-train-
quality`). Stage k keeps a document when its probability of the positive label is at least the stage's
threshold and writes `quality_<name>` into the metadata; later stages see only the survivors, and
`quality_stages_passed` counts the stages a document passed (for a survivor: all of them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from megatron_qwen.config import CorpusQualityStage

POSITIVE, NEGATIVE = "__label__good", "__label__bad"
_WORD = re.compile(r"\w+|[^\w\s]")
MAX_CHARS = 8000


def quality_tokens(text: str) -> str:
    return " ".join(_WORD.findall(text[:MAX_CHARS].lower()))


def read_seed(path: str, text_key: str = "text") -> list[str]:
    """Seed documents: a JSONL file (field `text_key`) or a folder of text files (one document each)."""
    p = Path(path)
    if p.is_dir():
        return [f.read_text(encoding="utf-8", errors="replace") for f in sorted(p.rglob("*")) if f.is_file()]
    texts = []
    with open(p, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{line_no}: not valid JSON: {e}") from e
            if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
                raise ValueError(f"{p}:{line_no}: no text field {text_key!r}")
            texts.append(record[text_key])
    return texts


def train_quality(positive: list[str], negative: list[str], output: str, held_out: float = 0.2, seed: int = 0,
                  epoch: int = 10, dim: int = 16, bucket: int = 200_000) -> dict:
    """Train a good/bad classifier from seed documents; held-out accuracy in the returned summary."""
    import fasttext

    rng = random.Random(seed)
    data = [(POSITIVE, t) for t in positive if t.strip()] + [(NEGATIVE, t) for t in negative if t.strip()]
    if not any(lab == POSITIVE for lab, _ in data) or not any(lab == NEGATIVE for lab, _ in data):
        raise ValueError("quality training needs positive and negative seed documents")
    rng.shuffle(data)
    cut = int(len(data) * held_out)
    test, train = data[:cut], data[cut:]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for label, text in train:
            f.write(f"{label} {quality_tokens(text)}\n")
        train_path = f.name
    from megatron_qwen.corpus.langid import train_fasttext

    try:
        train_fasttext(train_path, output, epoch=epoch, dim=dim, wordNgrams=2, bucket=bucket, lr=0.5, thread=1,
                       seed=seed, verbose=0)
    finally:
        os.remove(train_path)
    model = fasttext.load_model(output)
    right = sum(model.predict(quality_tokens(t))[0][0] == label for label, t in test)
    return {"model": output, "train_docs": len(train), "held_out_docs": len(test),
            "held_out_accuracy": round(right / len(test), 4) if test else None}


class QualityClassifier:
    def __init__(self, path: str):
        import fasttext

        self.model = fasttext.load_model(path)

    def score(self, text: str) -> float:
        labels, probs = self.model.predict(quality_tokens(text), k=2)
        return float(dict(zip(labels, probs)).get(POSITIVE, 0.0))


class QualityStageFilter(BaseFilter):
    """Stage `index` of the hierarchy: keep score >= threshold; the score goes into the metadata."""

    name = "🏅 quality stage"

    def __init__(self, stage: CorpusQualityStage, index: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.stage, self.index = stage, index
        self._classifier = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._classifier is None:
            self._classifier = QualityClassifier(self.stage.model)
        score = self._classifier.score(doc.text)
        doc.metadata[f"quality_{self.stage.name}"] = round(score, 4)
        if score < self.stage.threshold:
            doc.metadata["quality_stages_passed"] = self.index
            return False, f"quality_{self.stage.name}"
        doc.metadata["quality_stages_passed"] = self.index + 1
        return True


def main(argv: list[str] | None = None) -> int:
    from megatron_qwen.corpus.langid import write_json

    """`megatron-qwen corpus-train-quality`."""
    p = argparse.ArgumentParser(description="Train one fastText quality classifier (a stage of the hierarchy) "
                                            "from positive and negative seed documents.")
    p.add_argument("--positive", nargs="+", required=True, help="JSONL files (or folders of text files)")
    p.add_argument("--negative", nargs="+", required=True, help="JSONL files (or folders of text files)")
    p.add_argument("--text-key", default="text")
    p.add_argument("--output", required=True, help="model file to write (.bin)")
    p.add_argument("--held-out", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        pos = [t for path in args.positive for t in read_seed(path, args.text_key)]
        neg = [t for path in args.negative for t in read_seed(path, args.text_key)]
        summary = train_quality(pos, neg, args.output, args.held_out, args.seed)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    write_json(f"{args.output}.json", summary)
    print(json.dumps(summary, indent=2))
    return 0
