"""AST-FIM: the middle is exactly one syntax node, and prefix + middle + suffix is the file, byte for byte."""

import random

import numpy as np
import pytest

from megatron_qwen.data.formats.ast_fim import (
    CATEGORIES,
    NODE_TYPES,
    SpanConfig,
    UnparseableError,
    fim_conversation,
    fim_segments,
    language_of,
    make_samples,
    parse,
    parse_weights,
    parser_for,
)

# Every snippet has multi-byte characters before most nodes, so character offsets would cut wrongly.
PY_F1 = 'def greet(name: str) -> str:\n    """Grüße, 你好."""\n    return f"¡Hola, {name}!"'
PY_F2 = "def total(xs):\n    s = 0\n    for x in xs:\n        if x > 0:\n            s += x * 2\n    return s"
PYTHON = f"# café ☕ — naïve\nimport math\n\n\n{PY_F1}\n\n\nclass Box:\n    size = 3\n\n\n{PY_F2}\n"

JAVA_F1 = 'public int area() {\n        return width * height; // Fläche\n    }'
JAVA_F2 = 'static String label(int n) {\n        String s = "Nº " + n;\n        return n > 9 ? s : "0" + s;\n    }'
JAVA = ("// Größe: ≥ 0\npackage demo;\n\npublic class Shape {\n    private int width = 2, height = 3;\n\n    "
        f"{JAVA_F1}\n\n    {JAVA_F2}\n}}\n")

JS_F1 = "function sum(values) {\n  let total = 0;\n  for (const v of values) { total += v; }\n  return total;\n}"
JS_F2 = "(a, b) => a.localeCompare(b, 'ç')"
JAVASCRIPT = f"// Émoji 🙂 test\n'use strict';\n{JS_F1}\nconst names = ['Zoë', 'Åsa'].sort({JS_F2});\nconsole.log(sum([1, 2, 3]), names);\n"

CPP_F1 = "static int norm1(const Point& p) {\n    return std::abs(p.x) + std::abs(p.y);\n}"
CPP_F2 = "[](int v) { return v * 2; }"
CPP_F3 = "int main() {\n    Point p{3, -4};\n    auto f = " + CPP_F2 + ";\n    return f(norm1(p)) > 10 ? 0 : 1;\n}"
CPP = f"// Grüße 🙂\n#include <cstdlib>\nstruct Point {{ int x; int y; }};\n{CPP_F1}\n{CPP_F3}\n"

SNIPPETS = {"python": (PYTHON, {PY_F1, PY_F2}), "java": (JAVA, {JAVA_F1, JAVA_F2}),
            "javascript": (JAVASCRIPT, {JS_F1, JS_F2}), "cpp": (CPP, {CPP_F1, CPP_F2, CPP_F3})}


def nodes_with_span(tree, start, end):
    out, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.start_byte <= start and end <= node.end_byte:
            if (node.start_byte, node.end_byte) == (start, end):
                out.append(node.type)
            stack.extend(node.children)
    return out


def test_every_node_type_exists_in_its_grammar():
    for language, categories in NODE_TYPES.items():
        grammar = parser_for(language).language
        assert set(categories) == set(CATEGORIES)
        for types in categories.values():
            for t in types:
                assert grammar.id_for_node_kind(t, True), f"{language}: no node type {t!r}"


@pytest.mark.parametrize("language", SNIPPETS)
def test_middle_is_one_node_and_the_parts_rebuild_the_file_bytes(language):
    text, _ = SNIPPETS[language]
    source = text.encode("utf-8")
    assert len(source) > len(text)                      # multi-byte characters are present
    tree = parse(source, language)
    categories = set()
    for seed in range(60):
        (sample,) = make_samples(text, language, random.Random(seed), SpanConfig(min_bytes=4))
        assert (sample.prefix + sample.middle + sample.suffix).encode("utf-8") == source
        assert len(sample.prefix.encode("utf-8")) == sample.span.start
        assert source[sample.span.start:sample.span.end] == sample.middle.encode("utf-8")
        assert sample.span.node_type in nodes_with_span(tree, sample.span.start, sample.span.end)
        assert sample.span.node_type in NODE_TYPES[language][sample.span.category]
        categories.add(sample.span.category)
    assert len(categories) >= 3                          # the weights reach several categories


@pytest.mark.parametrize("language", SNIPPETS)
def test_function_only_weights_mask_exactly_the_known_functions(language):
    text, functions = SNIPPETS[language]
    config = SpanConfig(weights=parse_weights("function=1"), min_bytes=4)
    middles = {make_samples(text, language, random.Random(seed), config)[0].middle for seed in range(40)}
    assert middles == functions


def test_several_samples_per_file_have_distinct_spans():
    samples = make_samples(PYTHON, "python", random.Random(0), SpanConfig(), count=5)
    assert len(samples) == 5 and len({(s.span.start, s.span.end) for s in samples}) == 5


def test_size_bounds_and_share_are_respected():
    for seed in range(30):
        for s in make_samples(PYTHON, "python", random.Random(seed), SpanConfig(min_bytes=20, max_bytes=60), 3):
            assert 20 <= s.span.end - s.span.start <= 60
    assert make_samples("x = 1\n", "python", random.Random(0), SpanConfig(min_bytes=50)) == []
    big = SpanConfig(weights=parse_weights("class=1"), max_share=0.1)
    assert make_samples(JAVA, "java", random.Random(0), big) == []   # the class is the whole file


@pytest.mark.parametrize("language, text", [("python", "def f(:\n    return\n"), ("java", "class { int x = ; }"),
                                            ("javascript", "function (a, { return a; }"),
                                            ("cpp", "int main( { return 0 }"), ("python", "x = '\ud800'\n")])
def test_unparseable_files_raise(language, text):
    with pytest.raises(UnparseableError):
        make_samples(text, language, random.Random(0))


def test_language_detection():
    assert language_of(lang="C++") == "cpp" and language_of(lang="py") == "python"
    assert language_of(path="src/App.JSX") == "javascript" and language_of(path="a/b.hpp") == "cpp"
    assert language_of(path="x.rs") is None and language_of(lang="rust", path="x.py") is None


def test_parse_weights_errors():
    assert parse_weights("function=0.5, block=0.5")["statement"] == 0.0
    for bad in ("loop=1", "function", "function=x", "function=0", "function=-1,block=2"):
        with pytest.raises(ValueError, match="AST-FIM weight"):
            parse_weights(bad)


def test_conversation_rendering_keeps_the_file_and_avoids_markers_in_it():
    (sample,) = make_samples(PYTHON, "python", random.Random(1), SpanConfig())
    user, answer = fim_conversation(sample)
    assert user["role"] == "user" and answer["role"] == "assistant"
    assert sample.prefix + "<MISSING_CODE>" + sample.suffix in user["content"]
    assert answer["content"] == f"```python\n{sample.middle}\n```"
    tricky = "# the text <MISSING_CODE> appears here\ndef f(x):\n    return x + 1\n"
    (s2,) = make_samples(tricky, "python", random.Random(0), SpanConfig(weights=parse_weights("function=1")))
    u2, _ = fim_conversation(s2)
    assert s2.prefix + "<FILL_HERE>" + s2.suffix in u2["content"]


def test_fim_token_format_and_loss_on_the_middle_only(tok):
    (sample,) = make_samples(CPP, "cpp", random.Random(2), SpanConfig())
    segments = fim_segments(sample, tok)
    ids = np.concatenate([s.ids for s in segments])
    mask = np.concatenate([np.full(s.ids.size, s.loss) for s in segments])
    assert ids[0] == 151659 and (ids == 151661).sum() == 1 and (ids == 151660).sum() == 1 and ids[-1] == 151643
    middle_at = int(np.flatnonzero(ids == 151660)[0]) + 1
    assert mask.tolist() == [False] * middle_at + [True] * (len(ids) - middle_at)
    assert tok.decode(ids[middle_at:-1]) == sample.middle
    assert tok.decode(ids) == (f"<|fim_prefix|>{sample.prefix}<|fim_suffix|>{sample.suffix}<|fim_middle|>"
                               f"{sample.middle}<|endoftext|>")
