"""Code language identification: extension and shebang rules, then a small fastText classifier.

Why it exists: code dumps carry a language label per file that is often wrong (a `.h` that is C++, a
`.js` that is a JSON blob, a `.py` that is a licence text). The rules give a first label from the path
and the `#!` line; a fastText classifier trained by this project on extension-labelled files (`megatron-
qwen corpus-train-langid`) then checks that the content looks like that language, and labels files the
rules cannot. Files outside the configured language list are dropped, each with its reason.

fastText sees code as a stream of identifier, punctuation and indentation tokens (`code_tokens`), with word bigrams
and character n-grams; the model is kept small (hash buckets, dimension) so it loads in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from megatron_qwen.config import CorpusLangIdConfig

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".java": "java", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp", ".tcc": "cpp",
    ".go": "go", ".rs": "rust", ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".cs": "csharp",
    ".php": "php", ".rb": "ruby", ".kt": "kotlin", ".scala": "scala", ".swift": "swift", ".lua": "lua",
    ".pl": "perl", ".pm": "perl", ".r": "r", ".sql": "sql", ".hs": "haskell",
}
SHEBANGS: dict[str, str] = {"python": "python", "node": "javascript", "bash": "shell", "sh": "shell",
                            "zsh": "shell", "ruby": "ruby", "perl": "perl", "php": "php"}
_TOKEN = re.compile(r"\n[ \t]*|[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]")
MAX_CHARS = 8000  # the classifier reads the start of a file


def rule_language(path: str | None, text: str) -> str | None:
    """The language the path's extension or the `#!` line names, or None."""
    if text.startswith("#!"):
        first = text[2:text.find("\n") if "\n" in text else len(text)].split()
        if first:
            prog = Path(first[0]).name
            if prog == "env" and len(first) > 1:
                prog = first[1]
            prog = re.sub(r"[\d.]+$", "", prog)
            if prog in SHEBANGS:
                return SHEBANGS[prog]
    if path:
        name = path.lower()
        for ext in sorted({e for e in EXTENSIONS if name.endswith(e)}, key=len, reverse=True):
            return EXTENSIONS[ext]
    return None


def code_tokens(text: str) -> str:
    """One line of space-separated identifier, number and punctuation tokens, with a token `NL<k>` for each
    line start indented by k characters (k <= 8): layout tells Python from C-like code (fastText's input)."""
    return " ".join(f"NL{min(len(t) - 1, 8)}" if t[0] == "\n" else t for t in _TOKEN.findall(text[:MAX_CHARS]))


def collect_files(roots: Iterable[str], languages: list[str], per_language: int, seed: int = 0,
                  min_bytes: int = 200, max_bytes: int = 200_000) -> dict[str, list[Path]]:
    """Up to `per_language` files per language under `roots`, labelled by the rules (sampled with `seed`)."""
    found: dict[str, list[Path]] = {lang: [] for lang in languages}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fname in sorted(filenames):
                path = Path(dirpath) / fname
                lang = EXTENSIONS.get(path.suffix.lower())
                if lang in found:
                    try:
                        size = path.stat().st_size
                    except OSError:
                        continue
                    if min_bytes <= size <= max_bytes and not path.is_symlink():
                        found[lang].append(path)
    rng = random.Random(seed)
    for lang, paths in found.items():
        rng.shuffle(paths)
        found[lang] = paths[:per_language]
    return found


TRAIN_CHUNK = 1500


def _pieces(text: str) -> list[str]:
    """`text` cut at line ends into pieces of about TRAIN_CHUNK characters: more, shorter training examples
    (one example per file leaves too few updates for a stable model)."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + TRAIN_CHUNK)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return [p for p in pieces if p.strip()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _train_and_save(train_path: str, output: str, kwargs: dict) -> None:
    import fasttext

    model = fasttext.train_supervised(train_path, **kwargs)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    model.save_model(tmp)
    os.replace(tmp, output)


def train_fasttext(train_path: str, output: str, **kwargs) -> None:
    """`fasttext.train_supervised` in a fresh process, the model saved to `output`. In a long-lived process
    (the test session, after torch and other native libraries ran) training was seen to diverge ("Encountered
    NaN") or give different models for the same input and seed; a clean process is deterministic."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_train_and_save, train_path, output, kwargs).result()


def train_langid(files: dict[str, list[Path]], output: str, held_out: float = 0.2, seed: int = 0,
                 epoch: int = 30, dim: int = 16, bucket: int = 200_000) -> dict:
    """Train on the files of each language (a share held out), save the model; held-out accuracy per language."""
    import fasttext

    rng = random.Random(seed)
    train, test = [], []
    for lang, paths in sorted(files.items()):
        texts = [t for t in (_read(p) for p in paths) if t and t.strip()]
        rng.shuffle(texts)
        cut = max(1, int(len(texts) * held_out)) if len(texts) > 1 else 0
        test += [(lang, t) for t in texts[:cut]]
        train += [(lang, t) for t in texts[cut:]]
    if len({lang for lang, _ in train}) < 2:
        raise ValueError("language ID training needs files of at least two languages")
    rng.shuffle(train)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for lang, text in train:  # a few examples per file (whole lines, ~TRAIN_CHUNK characters each)
            for piece in _pieces(text[:MAX_CHARS]):
                f.write(f"__label__{lang} {code_tokens(piece)}\n")
        train_path = f.name
    try:
        train_fasttext(train_path, output, epoch=epoch, dim=dim, wordNgrams=2, minn=2, maxn=4, bucket=bucket,
                       lr=0.5, thread=1, seed=seed, verbose=0)
    finally:
        os.remove(train_path)
    model = fasttext.load_model(output)
    right, total = Counter(), Counter()
    for lang, text in test:
        labels, _ = model.predict(code_tokens(text).replace("\n", " "))
        total[lang] += 1
        right[lang] += labels[0] == f"__label__{lang}"
    per_lang = {lang: round(right[lang] / total[lang], 4) for lang in sorted(total)}
    return {"model": output, "train_files": len(train), "held_out_files": len(test),
            "held_out_accuracy": round(sum(right.values()) / max(1, sum(total.values())), 4),
            "per_language": per_lang, "held_out_per_language": dict(sorted(total.items()))}


class LanguageClassifier:
    """A trained fastText model: probabilities of each language for a text."""

    def __init__(self, path: str):
        import fasttext

        self.model = fasttext.load_model(path)
        self.labels = {label.removeprefix("__label__") for label in self.model.get_labels()}

    def scores(self, text: str) -> dict[str, float]:
        labels, probs = self.model.predict(code_tokens(text), k=-1)
        return {label.removeprefix("__label__"): float(p) for label, p in zip(labels, probs)}


def language_decision(path: str | None, text: str, cfg: CorpusLangIdConfig,
                      classifier: LanguageClassifier | None) -> tuple[str | None, float | None, str | None]:
    """(language, classifier score, drop reason): rules first, the classifier checks or fills in."""
    lang = rule_language(path, text)
    score = None
    if classifier is not None:
        scores = classifier.scores(text)
        if lang is None:
            best = max(scores, key=scores.get)
            if scores[best] >= cfg.min_confidence:
                lang, score = best, scores[best]
        elif lang in classifier.labels:
            score = scores.get(lang, 0.0)
            if score < cfg.min_confidence:
                return lang, score, "langid_disagrees"
    if lang is None:
        return None, score, None if cfg.keep_unknown else "unknown_language"
    if lang not in cfg.languages:
        return lang, score, f"language_not_kept:{lang}"
    return lang, score, None


class LanguageFilter(BaseFilter):
    """Label each file's language (metadata `language`, `language_score`) and drop those not kept."""

    name = "🔤 language ID"

    def __init__(self, cfg: CorpusLangIdConfig, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.cfg = cfg
        self._classifier = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.cfg.model and self._classifier is None:
            self._classifier = LanguageClassifier(self.cfg.model)
        lang, score, reason = language_decision(doc.metadata.get("path"), doc.text, self.cfg, self._classifier)
        if lang is not None:
            doc.metadata.setdefault("dump_language", doc.metadata.get("language"))
            doc.metadata["language"] = lang
        if score is not None:
            doc.metadata["language_score"] = round(score, 4)
        return True if reason is None else (False, reason)


def write_json(path: str, data: dict) -> None:
    from megatron_qwen.data.indexed import write_atomic_text

    write_atomic_text(path, json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """`megatron-qwen corpus-train-langid`."""
    p = argparse.ArgumentParser(description="Train the fastText code language classifier on extension-labelled "
                                            "files under the given folders; prints held-out accuracy.")
    p.add_argument("--roots", nargs="+", required=True, help="folders searched for source files")
    p.add_argument("--output", required=True, help="model file to write (.bin)")
    p.add_argument("--languages", nargs="+", default=CorpusLangIdConfig().languages)
    p.add_argument("--per-language", type=int, default=400, help="files per language at most")
    p.add_argument("--held-out", type=float, default=0.2, help="share of each language's files kept for testing")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for root in args.roots:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"--roots {root} is not a folder")
    files = collect_files(args.roots, args.languages, args.per_language, args.seed)
    files = {lang: paths for lang, paths in files.items() if len(paths) >= 2}
    summary = train_langid(files, args.output, args.held_out, args.seed)
    write_json(f"{args.output}.json", summary)
    print(json.dumps(summary, indent=2))
    return 0
