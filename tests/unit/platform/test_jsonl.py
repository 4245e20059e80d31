"""The one JSONL reader: objects with their line numbers; each kind of bad line raised or handed over."""

from __future__ import annotations

import gzip

import pytest

from megatron_qwen.platform.jsonl import JsonlError, iter_jsonl

LINES = [b'{"a": 1}', b"", b"   ", b"{not json", b'"a string"', b'{"t": "caf\xe9"}', b'{"a": 2}']


def test_objects_come_with_their_line_numbers_and_bad_lines_are_handed_over(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    bad: list[JsonlError] = []
    assert list(iter_jsonl(path, on_bad=bad.append)) == [(1, {"a": 1}), (7, {"a": 2})]
    assert [(e.line, e.kind) for e in bad] == [(4, "malformed JSON"), (5, "expected a JSON object"),
                                               (6, "non-UTF-8 bytes")]
    assert str(bad[0]).startswith(f"{path}:4: malformed JSON: ") and str(bad[1]).endswith("got str")
    with pytest.raises(JsonlError, match=r"x.jsonl:4: malformed JSON"):
        list(iter_jsonl(path))


def test_gzip_files_and_damaged_ones(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n' * 2000))
    assert sum(1 for _ in iter_jsonl(path)) == 4000
    path.write_bytes(path.read_bytes()[:-40])  # cut inside the stream
    with pytest.raises(JsonlError, match=r"x.jsonl.gz:\d+: cannot decode"):
        list(iter_jsonl(path))
    with pytest.raises(FileNotFoundError):
        list(iter_jsonl(tmp_path / "missing.jsonl"))
