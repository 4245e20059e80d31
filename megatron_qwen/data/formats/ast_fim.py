"""AST-based fill-in-the-middle samples: mask one whole syntax node of a source file, chosen with tree-sitter.

Why it exists: the Qwen2.5-Coder instruction mix contains a small share of FIM samples whose middle is a
complete logical unit (a function, a class, a block, a statement, an expression) rather than a random
character span. This module parses a file with the single-language tree-sitter grammars (Python, Java,
JavaScript, C++), picks one node (category by weight, then a node uniformly; bounded in size), and
splits the file into prefix, middle and suffix.

tree-sitter offsets are *bytes* of the UTF-8 encoding: the split is done on the bytes and each part is
decoded afterwards, so `prefix + middle + suffix` is the file, byte for byte, whatever it contains.

A sample is rendered either as a conversation (`fim_conversation`: the file with a placeholder in the
user turn, the missing code in the answer) or in the FIM token format of docs/formats.md
(`fim_segments`: `<|fim_prefix|>{pre}<|fim_suffix|>{suf}<|fim_middle|>` with loss on `{mid}<|endoftext|>`).
Files that do not parse cleanly raise `UnparseableError` (callers skip and count them).
"""

from __future__ import annotations

import importlib
import random
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from megatron_qwen.data.formats.chat import Segment
from megatron_qwen.data.tokenizer.qwen import EOD_TOKEN, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

CATEGORIES = ("function", "class", "block", "statement", "expression")
DEFAULT_WEIGHTS = {"function": 0.2, "class": 0.05, "block": 0.15, "statement": 0.35, "expression": 0.25}

# Node types of each category, per grammar (checked against the grammars in the tests).
NODE_TYPES: dict[str, dict[str, tuple[str, ...]]] = {
    "python": {
        "function": ("function_definition",),
        "class": ("class_definition",),
        "block": ("block",),
        "statement": ("expression_statement", "return_statement", "if_statement", "for_statement",
                      "while_statement", "with_statement", "try_statement", "assert_statement", "raise_statement",
                      "import_statement", "import_from_statement", "delete_statement"),
        "expression": ("call", "binary_operator", "boolean_operator", "comparison_operator",
                       "conditional_expression", "lambda", "list_comprehension", "dictionary_comprehension",
                       "set_comprehension", "generator_expression", "list", "dictionary", "tuple", "set",
                       "subscript", "attribute", "unary_operator", "await"),
    },
    "java": {
        "function": ("method_declaration", "constructor_declaration"),
        "class": ("class_declaration", "interface_declaration", "enum_declaration", "record_declaration"),
        "block": ("block", "constructor_body"),
        "statement": ("expression_statement", "local_variable_declaration", "return_statement", "if_statement",
                      "for_statement", "enhanced_for_statement", "while_statement", "do_statement",
                      "try_statement", "throw_statement", "yield_statement"),
        "expression": ("method_invocation", "binary_expression", "ternary_expression", "lambda_expression",
                       "object_creation_expression", "array_creation_expression", "field_access", "array_access",
                       "assignment_expression", "unary_expression", "cast_expression", "instanceof_expression",
                       "switch_expression"),
    },
    "javascript": {
        "function": ("function_declaration", "generator_function_declaration", "method_definition",
                     "function_expression", "arrow_function"),
        "class": ("class_declaration", "class"),
        "block": ("statement_block",),
        "statement": ("expression_statement", "lexical_declaration", "variable_declaration", "return_statement",
                      "if_statement", "for_statement", "for_in_statement", "while_statement", "do_statement",
                      "try_statement", "throw_statement", "switch_statement"),
        "expression": ("call_expression", "binary_expression", "ternary_expression", "member_expression",
                       "subscript_expression", "object", "array", "assignment_expression", "unary_expression",
                       "new_expression", "await_expression"),
    },
    "cpp": {
        "function": ("function_definition", "lambda_expression"),
        "class": ("class_specifier", "struct_specifier"),
        "block": ("compound_statement",),
        "statement": ("expression_statement", "declaration", "return_statement", "if_statement", "for_statement",
                      "for_range_loop", "while_statement", "do_statement", "switch_statement", "try_statement",
                      "throw_statement"),
        "expression": ("call_expression", "binary_expression", "conditional_expression", "assignment_expression",
                       "field_expression", "subscript_expression", "new_expression", "unary_expression",
                       "cast_expression", "initializer_list"),
    },
}
GRAMMAR_MODULES = {"python": "tree_sitter_python", "java": "tree_sitter_java",
                   "javascript": "tree_sitter_javascript", "cpp": "tree_sitter_cpp"}
DISPLAY_NAMES = {"python": "Python", "java": "Java", "javascript": "JavaScript", "cpp": "C++"}
ALIASES = {"python": "python", "py": "python", "python3": "python", "java": "java", "javascript": "javascript",
           "js": "javascript", "jsx": "javascript", "node": "javascript", "cpp": "cpp", "c++": "cpp", "cxx": "cpp",
           "cc": "cpp"}
EXTENSIONS = {".py": "python", ".pyi": "python", ".java": "java", ".js": "javascript", ".mjs": "javascript",
              ".cjs": "javascript", ".jsx": "javascript", ".cpp": "cpp", ".cc": "cpp", ".cxx": "cpp", ".c++": "cpp",
              ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp", ".h": "cpp", ".ipp": "cpp", ".tpp": "cpp"}
PLACEHOLDERS = ("<MISSING_CODE>", "<FILL_HERE>", "<<<MISSING>>>", "__MISSING_CODE_7f3a__")


class UnparseableError(ValueError):
    """The file does not parse cleanly with its grammar (or is not valid text)."""


@dataclass(frozen=True)
class SpanConfig:
    """How nodes are chosen: category weights and the size bounds of the masked middle."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    min_bytes: int = 8
    max_bytes: int = 4096
    max_share: float = 0.6  # the middle may be at most this share of the file

    def weight(self, category: str) -> float:
        return self.weights.get(category, 0.0)


@dataclass(frozen=True)
class Span:
    start: int  # byte offsets into the UTF-8 encoding of the file
    end: int
    node_type: str
    category: str


@dataclass(frozen=True)
class FimSample:
    language: str
    prefix: str
    middle: str
    suffix: str
    span: Span


def language_of(path: str | None = None, lang: str | None = None) -> str | None:
    """The grammar name for a language tag (`py`, `C++`, ...) or, failing that, a file extension."""
    if lang:
        return ALIASES.get(lang.strip().lower())
    if path:
        return EXTENSIONS.get(PurePosixPath(path).suffix.lower())
    return None


def record_language(record: dict, default: str | None = None) -> str | None:
    """A code record's language: its `lang`/`language` tag if it has one, else its `path` extension, else `default`."""
    tag = record.get("lang") or record.get("language")
    if tag:
        return language_of(lang=tag) if isinstance(tag, str) else None
    path = record.get("path")
    from_path = language_of(path=path) if isinstance(path, str) else None
    return from_path or (language_of(lang=default) if default else None)


_PARSERS = threading.local()  # a tree-sitter Parser is not shared between threads (preprocessing workers)


def parser_for(language: str):
    """A tree-sitter parser for `language` (one of NODE_TYPES), created once per thread."""
    parsers = _PARSERS.__dict__
    if language not in parsers:
        import tree_sitter

        module = importlib.import_module(GRAMMAR_MODULES[language])
        parsers[language] = tree_sitter.Parser(tree_sitter.Language(module.language()))
    return parsers[language]


def parse(source: bytes, language: str):
    """Parse bytes; UnparseableError when the tree has syntax errors or missing nodes."""
    if language not in NODE_TYPES:
        raise ValueError(f"no grammar for language {language!r}; supported: {sorted(NODE_TYPES)}")
    tree = parser_for(language).parse(source)
    if tree.root_node.has_error:
        raise UnparseableError(f"{DISPLAY_NAMES[language]} source has syntax errors")
    return tree


def _category_of(language: str) -> dict[str, str]:
    return {t: c for c, types in NODE_TYPES[language].items() for t in types}


def candidate_spans(tree, source: bytes, language: str, config: SpanConfig) -> dict[str, list[Span]]:
    """Maskable nodes by category: named, within the size bounds, not blank, on character boundaries."""
    category_of = _category_of(language)
    limit = min(config.max_bytes, int(config.max_share * len(source)))
    out: dict[str, list[Span]] = {}
    seen: set[tuple[int, int]] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(reversed(node.named_children))
        category = category_of.get(node.type)
        if category is None or config.weight(category) <= 0:
            continue
        start, end = node.start_byte, node.end_byte
        if not config.min_bytes <= end - start <= limit or (start, end) in seen:
            continue
        try:
            middle = source[start:end].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not middle.strip():
            continue
        seen.add((start, end))  # a node and its only child can share a span: keep the outer one
        out.setdefault(category, []).append(Span(start, end, node.type, category))
    return out


def choose_span(candidates: dict[str, list[Span]], config: SpanConfig, rng: random.Random,
                exclude: set[tuple[int, int]] = frozenset()) -> Span | None:
    """A category by weight among those with candidates, then one of its nodes uniformly; None if none left."""
    pools = {c: [s for s in spans if (s.start, s.end) not in exclude] for c, spans in candidates.items()}
    pools = {c: p for c, p in pools.items() if p}
    if not pools:
        return None
    categories = [c for c in CATEGORIES if c in pools]
    category = rng.choices(categories, weights=[config.weight(c) for c in categories])[0]
    return rng.choice(pools[category])


def split_source(source: bytes, span: Span) -> tuple[str, str, str]:
    """(prefix, middle, suffix) as text, cut at the span's byte offsets."""
    return (source[:span.start].decode("utf-8"), source[span.start:span.end].decode("utf-8"),
            source[span.end:].decode("utf-8"))


def make_samples(text: str, language: str, rng: random.Random, config: SpanConfig = SpanConfig(),
                 count: int = 1) -> list[FimSample]:
    """Up to `count` samples with distinct spans; [] when the file has no candidate node."""
    try:
        source = text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates from JSON escapes
        raise UnparseableError(f"text is not valid Unicode: {e.reason}") from e
    tree = parse(source, language)
    candidates = candidate_spans(tree, source, language, config)
    samples, used = [], set()
    for _ in range(count):
        span = choose_span(candidates, config, rng, used)
        if span is None:
            break
        used.add((span.start, span.end))
        samples.append(FimSample(language, *split_source(source, span), span))
    return samples


# -- rendering -------------------------------------------------------------------------------------------
def _fence(*texts: str) -> str:
    longest, run = 0, 0
    for text in texts:
        for ch in text:
            run = run + 1 if ch == "`" else 0
            longest = max(longest, run)
        run = 0
    return "`" * max(3, longest + 1)


def _code_block(code: str, tag: str, fence: str) -> str:
    return f"{fence}{tag}\n{code}{'' if code.endswith(chr(10)) else chr(10)}{fence}"


def placeholder_for(sample: FimSample) -> str | None:
    """A gap marker that occurs nowhere in the file, or None."""
    text = sample.prefix + sample.middle + sample.suffix
    return next((p for p in PLACEHOLDERS if p not in text), None)


def fim_conversation(sample: FimSample) -> list[dict] | None:
    """The sample as [user, assistant] messages (None if no placeholder is free in this file)."""
    marker = placeholder_for(sample)
    if marker is None:
        return None
    code = sample.prefix + marker + sample.suffix
    fence = _fence(code, sample.middle)
    tag = sample.language
    what = sample.span.category if sample.span.category != "block" else "block of code"
    user = (f"Fill in the missing {what} in the {DISPLAY_NAMES[sample.language]} code below. The gap is marked "
            f"{marker}. Reply with only the code that replaces the marker.\n\n{_code_block(code, tag, fence)}")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _code_block(sample.middle, tag, fence)}]


def fim_segments(sample: FimSample, tokenizer) -> list[Segment]:
    """The sample in the PSM token format; loss on the middle and the closing <|endoftext|> only."""
    def ids(values):
        return np.asarray(values, dtype=np.int32)

    prompt = np.concatenate([ids([tokenizer.token_id(FIM_PREFIX)]), ids(tokenizer.encode_raw(sample.prefix)),
                             ids([tokenizer.token_id(FIM_SUFFIX)]), ids(tokenizer.encode_raw(sample.suffix)),
                             ids([tokenizer.token_id(FIM_MIDDLE)])])
    answer = np.concatenate([ids(tokenizer.encode_raw(sample.middle)), ids([tokenizer.token_id(EOD_TOKEN)])])
    return [Segment(prompt, False, 0), Segment(answer, True, 1)]


def parse_weights(spec: str) -> dict[str, float]:
    """`"function=0.2,statement=0.8"` -> weights (categories not named get 0); errors name the bad entry."""
    weights = dict.fromkeys(CATEGORIES, 0.0)
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in weights:
            raise ValueError(f"AST-FIM weight {item!r}: expected CATEGORY=WEIGHT with CATEGORY in {CATEGORIES}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"AST-FIM weight {item!r}: {value!r} is not a number") from None
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"AST-FIM weights {spec!r}: need non-negative weights, at least one positive")
    return weights


def conversation_records(code_records: Iterable[dict], seed: int, config: SpanConfig = SpanConfig(),
                         per_file: int = 1, default_lang: str | None = None, key: str = "text",
                         counters: Counter | None = None) -> Iterator[dict]:
    """Code records (`{key, path | lang}`) -> AST-FIM conversation records in the `messages` layout.

    Each output record also names its source (`source: "ast-fim"`, language, node type, category, path).
    Record i uses `random.Random(seed, i)`, so the output does not depend on where a run stops. Skips are
    counted in `counters` (unknown language, unparseable, no candidate node, no free placeholder).
    """
    counters = counters if counters is not None else Counter()
    for i, record in enumerate(code_records):
        text = record.get(key)
        language = record_language(record, default_lang)
        if not isinstance(text, str) or not text.strip():
            counters[f"skipped:missing field '{key}'"] += 1
            continue
        if language is None:
            counters["skipped:unknown language"] += 1
            continue
        try:
            samples = make_samples(text, language, random.Random(f"{seed}:{i}"), config, per_file)
        except UnparseableError:
            counters[f"skipped:unparseable {language} file"] += 1
            continue
        if not samples:
            counters["skipped:no maskable node"] += 1
        for sample in samples:
            messages = fim_conversation(sample)
            if messages is None:
                counters["skipped:no free placeholder"] += 1
                continue
            counters["samples"] += 1
            counters[f"category:{sample.span.category}"] += 1
            counters[f"language:{language}"] += 1
            yield {"messages": messages, "source": "ast-fim", "language": language, "path": record.get("path"),
                   "node_type": sample.span.node_type, "category": sample.span.category}
