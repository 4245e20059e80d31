"""Bad input is counted and skipped, the run finishes; outputs appear only complete (temp name, then rename)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megatron_qwen.data.indexed import IndexedWriter, read_documents
from megatron_qwen.data.preprocess.modes.registry import SkipRecord, register_mode
from tests.unit.data.helpers import run_mode


def test_bad_records_are_counted_and_skipped(qwen, tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b'{"text": "unterminated',
        b"\xff\xfe not utf-8 \x80",
        b"",
        json.dumps({"other": "no text field"}).encode(),
        json.dumps({"text": ""}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"text": "good two"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    from megatron_qwen.data.preprocess.cli import build_parser
    from megatron_qwen.data.preprocess.pipeline import run

    options = build_parser().parse_args(["--input", str(path), "--output-prefix", str(tmp_path / "o"),
                                         "--tokenizer", str(qwen.path), "--append-eod", "--no-progress"])
    report = run(options)
    assert report["documents"] == 2
    assert report["skipped"]["by_reason"] == {
        "malformed JSON": 1, "non-UTF-8 bytes": 1, "missing field 'text'": 1, "empty field 'text'": 1,
        "field 'text' is not text": 1, "record is not a JSON object": 1}
    assert report["counters"]["blank_lines"] == 1
    lines_by_reason = {e["reason"]: e["line"] for e in report["skipped_examples"]}
    assert lines_by_reason["malformed JSON"] == 2 and lines_by_reason["non-UTF-8 bytes"] == 3
    docs = read_documents(tmp_path / "o_text_document")
    assert [d.tolist() for d in docs] == [qwen.encode_raw("good one") + [151643], qwen.encode_raw("good two") + [151643]]
    assert json.loads((tmp_path / "o_report.json").read_text())["skipped"]["total"] == 6


def test_json_the_fast_parser_rejects_is_decided_by_the_standard_rules(qwen, tmp_path):
    """orjson refuses lone surrogates and NaN, which Python's json accepts: those records still count, and
    line numbers stay exact across small blocks read by two workers, CRLF and a last line without newline."""
    lines = [json.dumps({"text": "lone \ud800 surrogate"}).encode(), b'{"text": "nan", "score": NaN}',
             b'{"text": "crlf"}\r', b"{broken", json.dumps({"text": "x" * 300}).encode()] * 3
    lines += [b'{"text": "last"}']
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines))
    report, prefix = run_mode(qwen.path, tmp_path, "plain", None, "--input", str(path), "--workers", "2",
                              "--chunk-bytes", "40", "--append-eod")
    assert report["documents"] == 13 and report["skipped"]["by_reason"] == {"malformed JSON": 3}
    assert [e["line"] for e in report["skipped_examples"]] == [4, 9, 14]
    docs = read_documents(prefix.with_name("out_text_document"))
    assert docs[0].tolist() == qwen.encode_raw("lone \ufffd surrogate") + [qwen.eod]
    assert docs[-1].tolist() == qwen.encode_raw("last") + [qwen.eod]


def test_gzip_input_reads_like_plain_input(qwen, tmp_path):
    import gzip

    lines = [json.dumps({"text": f"record {k} " * (k % 7 + 1)}).encode() for k in range(60)] + [b"{bad"]
    plain, packed = tmp_path / "in.jsonl", tmp_path / "in.jsonl.gz"
    plain.write_bytes(b"\n".join(lines) + b"\n")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    reports = [run_mode(qwen.path, tmp_path, "plain", None, "--input", str(p), "--chunk-bytes", "100", name=p.stem)[0]
               for p in (plain, packed)]
    assert [r["skipped_examples"] for r in reports] == [[{"source": str(p), "line": 61, "reason": "malformed JSON"}]
                                                        for p in (plain, packed)]
    assert (tmp_path / "in.jsonl_text_document.bin").read_bytes() == (tmp_path / "in_text_document.bin").read_bytes()


def test_missing_input_is_a_clear_error(qwen, tmp_path):
    from megatron_qwen.data.preprocess.cli import build_parser
    from megatron_qwen.data.preprocess.pipeline import run

    options = build_parser().parse_args(["--input", str(tmp_path / "nope.jsonl"), "--output-prefix",
                                         str(tmp_path / "o"), "--tokenizer", str(qwen.path)])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run(options)


def _explode(record, ctx):
    """Test mode: raises KeyboardInterrupt at the record marked 'boom' (an interrupted run)."""
    if record.get("boom"):
        raise KeyboardInterrupt
    if record.get("bug"):
        raise SkipRecord("bug")
    from megatron_qwen.data.preprocess.modes.registry import Document, Piece

    return [Document([Piece(record["text"]), Piece(ctx.tokenizer.eod)])]


register_mode("test-explode", _explode)


def test_interrupted_run_leaves_no_dataset_under_final_name(qwen, tmp_path):
    records = [{"text": f"doc {k}"} for k in range(50)] + [{"boom": True}]
    with pytest.raises(KeyboardInterrupt):
        run_mode(qwen.path, tmp_path, "test-explode", records, "--chunk-bytes", "64")
    leftovers = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".jsonl"))
    assert leftovers == []


def test_interrupted_rerun_keeps_the_previous_complete_dataset(qwen, tmp_path):
    report, prefix = run_mode(qwen.path, tmp_path, "test-explode", [{"text": "first run"}])
    before = (tmp_path / "out_text_document.bin").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        run_mode(qwen.path, tmp_path, "test-explode", [{"text": "second"}, {"boom": True}])
    assert (tmp_path / "out_text_document.bin").read_bytes() == before
    assert [d.tolist() for d in read_documents(prefix.with_name("out_text_document"))] == [
        qwen.encode_raw("first run") + [151643]]


def test_writer_round_trips_through_megatron_indexed_dataset(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    w = IndexedWriter(tmp_path / "d", np.int32)
    w.add(np.array([1, 2, 3, 4, 5, 6, 150000], np.int32), np.array([2, 1, 4], np.int32), np.array([2, 1], np.int64))
    w.add_document(np.array([7, 8], np.int32))
    assert not (tmp_path / "d.bin").exists() and not (tmp_path / "d.idx").exists()
    w.finish()
    w.commit()
    ds = IndexedDataset(str(tmp_path / "d"))
    assert len(ds) == 4 and ds.index.dtype == np.int32
    assert ds.document_indices.tolist() == [0, 2, 3, 4]
    assert [ds[k].tolist() for k in range(4)] == [[1, 2], [3], [4, 5, 6, 150000], [7, 8]]
    assert sorted(os.listdir(tmp_path)) == ["d.bin", "d.idx"]


def test_writer_uses_uint16_for_small_vocab_and_rejects_overflow(tmp_path):
    from megatron_qwen.data.indexed import token_dtype

    assert token_dtype(622) is np.uint16 and token_dtype(151665) is np.int32
    w = IndexedWriter(tmp_path / "s", token_dtype(622))
    with pytest.raises(ValueError, match="out of range"):
        w.add_document(np.array([70000]))
    w.abort()
    assert os.listdir(tmp_path) == []
