"""Repository documents with the real tokenizer: exact ids, repo-level FIM, file order, splitting, directory input."""

from __future__ import annotations

import random

import numpy as np
import pytest

from megatron_qwen.data.formats.code import ControlIds, undo_fim_text
from megatron_qwen.data.formats.repo_order import dependency_order, import_graph
from megatron_qwen.data.indexed import read_documents
from megatron_qwen.data.preprocess.assemble import encode_pieces
from tests.unit.data.helpers import run_mode

OPS = "def add(a, b):\n    return a + b\n"
MAIN = "from calc.ops import add\nprint(add(1, 2))\n"
REPO = {"name": "octo/calc", "files": [{"path": "main.py", "content": MAIN}, {"path": "calc/ops.py", "content": OPS}]}
HEADER = [151663, 41692, 78, 2899, 16927, 198]  # <|repo_name|>octo/calc\n
OPS_FILE = [151664, 26586, 14, 3721, 7197, 198, 750, 912, 2877, 11, 293, 982, 262, 470, 264, 488, 293, 271]


def test_repo_document_exact_ids_dependency_order(qwen, tmp_path):
    report, prefix = run_mode(qwen.path, tmp_path, "repo", [REPO], "--fim-rate", "0", "--repo-file-order", "dependency")
    [doc] = read_documents(f"{prefix}_text_document")
    expected = HEADER + OPS_FILE + [151664, 3817, 7197, 198, 1499, 10035, 46778, 1159, 912, 198, 1350, 25906, 7, 16,
                                    11, 220, 17, 1171, 151643]
    assert doc.tolist() == expected
    text = f"<|repo_name|>octo/calc\n<|file_sep|>calc/ops.py\n{OPS}\n<|file_sep|>main.py\n{MAIN}<|endoftext|>"
    assert expected == qwen.hf(text, add_special_tokens=False).input_ids
    assert report["fim_share"] == 0.0


class _FixedCuts(random.Random):
    """An RNG whose randint returns the given cut points (to write the expected FIM ids by hand)."""

    def __init__(self, cuts):
        super().__init__(0)
        self.cuts = list(cuts)

    def randint(self, a, b):
        return self.cuts.pop(0)


def test_repo_level_fim_exact_ids(qwen):
    """The production path (the `repo` mode) with the FIM cut points fixed, against ids written by hand."""
    from megatron_qwen.data.preprocess.cli import build_parser
    from megatron_qwen.data.preprocess.modes.registry import ModeContext, get_mode

    options = build_parser().parse_args(["--mode", "repo", "--input", "x.jsonl", "--output-prefix", "out",
                                         "--tokenizer", str(qwen.path), "--fim-rate", "1"])
    ctx = ModeContext(qwen, options)
    pre, mid = "from calc.ops import add\nprint(", "add(1, 2)"
    ctx._rng = _FixedCuts([len(pre), len(pre) + len(mid)])
    [doc] = get_mode("repo").fn({"name": "octo/calc", "files": [{"path": "main.py", "content": MAIN}]}, ctx)
    got = encode_pieces(qwen, doc.pieces).tolist()
    assert got == HEADER + [151664, 3817, 7197, 198, 151659, 1499, 10035, 46778, 1159, 912, 198, 1350, 7, 151661, 340,
                            151660, 718, 7, 16, 11, 220, 17, 8, 151643]
    assert ctx.counters["fim_documents"] == 1


def test_repo_fim_applies_to_last_file_and_round_trips(qwen, tmp_path):
    report, prefix = run_mode(qwen.path, tmp_path, "repo", [REPO], "--fim-rate", "1")
    [doc] = read_documents(f"{prefix}_text_document")
    ids = ControlIds.of(qwen, repo=True)
    tokens = doc.tolist()
    assert tokens[: len(HEADER) + len(OPS_FILE)] == HEADER + OPS_FILE
    assert tokens.count(151659) == tokens.count(151661) == tokens.count(151660) == 1
    expected = f"<|repo_name|>octo/calc\n<|file_sep|>calc/ops.py\n{OPS}\n<|file_sep|>main.py\n{MAIN}<|endoftext|>"
    assert undo_fim_text(doc, ids, qwen.decode) == expected
    assert report["fim_documents"] == 1


def test_import_graph_and_dependency_order():
    files = [
        ("app/main.py", "from app import models\nfrom .views import render\nimport json\n"),
        ("app/views.py", "from app.models import User\n"),
        ("app/models.py", "import app.db as db\n"),
        ("app/db.py", "X = 1\n"),
        ("web/index.js", "import {a} from './util';\nconst b = require('../lib/b.js');\n"),
        ("web/util.ts", "export const a = 1;\n"),
        ("lib/b.js", "module.exports = 2;\n"),
        ("src/x.c", '#include "x.h"\n#include <stdio.h>\n'),
        ("src/x.h", "int x;\n"),
        ("cyc/a.py", "from cyc import b\n"),
        ("cyc/b.py", "from cyc import a\nfrom cyc import c\n"),
        ("cyc/c.py", "\n"),
    ]
    graph = import_graph(files)
    assert graph["app/main.py"] == {"app/models.py", "app/views.py"}
    assert graph["app/views.py"] == {"app/models.py"}
    assert graph["app/models.py"] == {"app/db.py"}
    assert graph["web/index.js"] == {"web/util.ts", "lib/b.js"}
    assert graph["src/x.c"] == {"src/x.h"}
    order = [files[k][0] for k in dependency_order(files)]
    pos = {p: k for k, p in enumerate(order)}
    assert sorted(order) == sorted(p for p, _ in files)
    for path, deps in graph.items():
        if not path.startswith("cyc/"):
            assert all(pos[d] < pos[path] for d in deps), (path, deps, order)
    assert pos["cyc/c.py"] < pos["cyc/b.py"]  # the cycle a<->b is broken after c, b's other dependency


def test_random_order_is_seeded(qwen, tmp_path):
    files = [{"path": f"m{k}.py", "content": f"x{k} = {k}\n"} for k in range(12)]
    rec = {"name": "r", "files": files}
    a, pa = run_mode(qwen.path, tmp_path, "repo", [rec], "--repo-file-order", "random", "--fim-rate", "0", name="a")
    b, pb = run_mode(qwen.path, tmp_path, "repo", [rec], "--repo-file-order", "random", "--fim-rate", "0", name="b")
    c, pc = run_mode(qwen.path, tmp_path, "repo", [rec], "--repo-file-order", "random", "--fim-rate", "0",
                     "--seed", "5", name="c")
    da, db, dc = (read_documents(f"{p}_text_document")[0] for p in (pa, pb, pc))
    assert np.array_equal(da, db) and not np.array_equal(da, dc)


def _file_paths(doc_text: str) -> list[str]:
    return [part.split("\n", 1)[0] for part in doc_text.split("<|file_sep|>")[1:]]


def test_long_repository_splits_at_file_boundaries_with_header_repeated(qwen, tmp_path):
    files = [{"path": f"pkg/m{k:02d}.py", "content": f"def f{k}(x):\n    return x + {k}\n" * (1 + k % 4)}
             for k in range(20)]
    rec = {"name": "big/repo", "files": files}
    report, prefix = run_mode(qwen.path, tmp_path, "repo", [rec], "--max-tokens", "120", "--fim-rate", "0",
                              "--repo-file-order", "dependency")
    docs = read_documents(f"{prefix}_text_document")
    header = [151663] + qwen.encode_raw("big/repo\n")
    assert len(docs) > 3 and report["counters"]["split_repositories"] == 1
    seen = []
    for doc in docs:
        t = doc.tolist()
        assert len(t) <= 120
        assert t[: len(header)] == header and t[len(header)] == 151664 and t[-1] == 151643
        assert t.count(151663) == 1
        text = qwen.decode(t)
        seen += _file_paths(text)
        for part in text.removesuffix("<|endoftext|>").split("<|file_sep|>")[1:]:  # whole files only
            path, content = part.split("\n", 1)
            original = next(f["content"] for f in files if f["path"] == path)
            assert content in (original, original + "\n")
    assert seen == [f["path"] for f in files]  # every file exactly once, order kept across pieces
    assert "truncated_files" not in report["counters"]


def test_single_file_longer_than_max_tokens_is_truncated_and_counted(qwen, tmp_path):
    big = "".join(f"value_{k} = {k} * {k}\n" for k in range(300))
    rec = {"name": "r", "files": [{"path": "a.py", "content": "A = 1\n"}, {"path": "big.py", "content": big}]}
    report, prefix = run_mode(qwen.path, tmp_path, "repo", [rec], "--max-tokens", "200", "--fim-rate", "0.5",
                              "--repo-file-order", "random")
    docs = read_documents(f"{prefix}_text_document")
    assert all(len(d) <= 200 for d in docs)
    assert any(len(d) == 200 for d in docs)
    assert report["counters"]["truncated_files"] == 1
    # The truncated file's ids are the first ids of the whole file's encoding (its tail is never encoded:
    # the file is clipped at a line start far past the room it has).
    [cut] = [d.tolist() for d in docs if len(d) == 200]
    header = qwen.hf("<|repo_name|>r\n", add_special_tokens=False).input_ids
    whole = qwen.hf(f"big.py\n{big}", add_special_tokens=False).input_ids
    assert cut == header + [151664] + whole[: 200 - len(header) - 2] + [151643]


@pytest.mark.parametrize("chars_per_token", [8, 1])  # clipped / the clipped prefix fits, so encoded in full
def test_long_file_clipping_gives_the_ids_of_full_encoding(qwen, monkeypatch, chars_per_token):
    import megatron_qwen.data.preprocess.modes.repo as modes_repo

    monkeypatch.setattr(modes_repo, "CLIP_CHARS_PER_TOKEN", chars_per_token)
    big = "".join(f"value_{k:03d} = {k}\n" for k in range(400))
    room = 150
    clipped = modes_repo._EncodedFiles(qwen, [big, "y = 2\n"], room)
    full = modes_repo._EncodedFiles(qwen, [big, "y = 2\n"], None)
    assert clipped.clipped == [chars_per_token == 8, False]
    n = room if clipped.clipped[0] else full.with_newline[0].size
    assert clipped.with_newline[0][:n].tolist() == full.with_newline[0][:n].tolist()
    assert clipped.last(0)[:room].tolist() == full.last(0)[:room].tolist()
    assert clipped.with_newline[1].tolist() == full.with_newline[1].tolist()


def test_input_dir_skips_binary_and_non_utf8_files(qwen, tmp_path):
    repo = tmp_path / "myrepo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "core.py").write_text("def core():\n    return 1\n")
    (repo / "main.py").write_text("from pkg.core import core\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (repo / "latin1.txt").write_bytes("café".encode("latin-1"))
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    report, prefix = run_mode(qwen.path, tmp_path, "repo", None, "--input-dir", str(repo), "--fim-rate", "0")
    [doc] = read_documents(f"{prefix}_text_document")
    text = qwen.decode(doc.tolist())
    assert text.startswith("<|repo_name|>myrepo\n")
    assert _file_paths(text) == ["pkg/__init__.py", "pkg/core.py", "main.py"]
    assert report["counters"]["skipped_files:binary"] == 1
    assert report["counters"]["skipped_files:non-UTF-8"] == 1


@pytest.mark.parametrize("record,reason", [
    ({"files": [{"path": "a.py", "content": "x"}]}, "missing field 'name'"),
    ({"name": "r"}, "missing field 'files'"),
    ({"name": "r", "files": [{"path": "a.bin", "content": "\x00\x01"}]}, "no usable files"),
])
def test_bad_repo_records_are_skipped_with_reason(qwen, tmp_path, record, reason):
    report, _ = run_mode(qwen.path, tmp_path, "repo", [record, REPO])
    assert report["documents"] == 1
    assert report["skipped"]["by_reason"] == {reason: 1}


def test_line_start_split_encodes_like_the_whole_text(qwen):
    """The repo mode encodes a file as head + last line; that must equal encoding it whole."""
    from megatron_qwen.data.preprocess.modes.repo import last_line_start
    from tests.unit.data.helpers import stdlib_texts

    assert qwen.line_start_is_boundary
    tricky = ["a)\n\nb", "x  \n\t\ny = 1", "foo\n\u0301bar", "x\n'sup", "é\n1", "if x:\n    pass\n)\n", "\n\nz",
              "only one line", "a\r\nb\r\n", "x = (1,\n     2)\n# end"]
    for text in stdlib_texts(40) + tricky:
        q = last_line_start(text)
        assert q == 0 or (text[q - 1] == "\n" and not text[q].isspace())
        for t in (text, text + "\n"):
            assert qwen.encode_raw(t) == qwen.encode_raw(t[:q]) + qwen.encode_raw(t[q:]), repr(t[-80:])


def test_repo_fim_parts_reuse_the_file_encoding_exactly(qwen):
    """Prefix/suffix of repo-level FIM reuse the file's tokens up to/from a line start: same ids as fresh encoding."""
    from megatron_qwen.data.preprocess.modes.repo import _EncodedFiles
    from tests.unit.data.helpers import stdlib_texts

    texts = [f"pkg/m{k}.py\n{t}" for k, t in enumerate(stdlib_texts(15))] + ["a.py\n  indented\nx = 1\n  y\nz"]
    enc = _EncodedFiles(qwen, texts)
    rng = random.Random(3)
    for k, text in enumerate(texts):
        start = text.index("\n") + 1
        for _ in range(8):
            i, j = sorted(rng.randint(start, len(text)) for _ in range(2))
            got = [a.tolist() for a in enc.fim_parts(k, start, i, j)]
            assert got == [qwen.encode_raw(text[start:i]), qwen.encode_raw(text[i:j]), qwen.encode_raw(text[j:])]
