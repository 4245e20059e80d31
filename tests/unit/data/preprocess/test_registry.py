"""The mode registry contract other modes (sft, dpo) build on: loss masks, sequences, outputs, errors."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_qwen.data.preprocess.modes.registry import (
    Document,
    Piece,
    SkipRecord,
    get_mode,
    load_modes,
    register_mode,
)
from tests.unit.data.helpers import run_mode


def _chat(record, ctx):
    """Test mode: prompt (no loss) + answer (loss) per record, two documents for 'twice'."""
    if "q" not in record:
        raise SkipRecord("missing field 'q'")
    if record.get("crash"):
        raise ZeroDivisionError("mode bug")
    im_start, im_end = ctx.tokenizer.token_id("<|im_start|>"), ctx.tokenizer.token_id("<|im_end|>")
    doc = Document([Piece(im_start, loss=False), Piece(f"user\n{record['q']}", loss=False), Piece(im_end, loss=False),
                    Piece(np.asarray(ctx.tokenizer.encode_raw(record["a"])), loss=True, new_sequence=True),
                    Piece(ctx.tokenizer.eod, loss=True)])
    return [doc, doc] if record.get("twice") else [doc]


register_mode("test-chat", _chat, required_tokens=("<|im_start|>", "<|im_end|>"), loss_mask=True)


def test_builtin_modes_are_registered():
    assert {"plain", "text", "math", "file", "repo"} <= set(load_modes())
    with pytest.raises(KeyError, match="registered modes"):
        get_mode("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_mode("plain", _chat)


def test_loss_mask_dataset_has_identical_boundaries(qwen, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    records = [{"q": "hi", "a": "hello!"}, {"q": "2+2?", "a": "4", "twice": True}, {"nothing": 1},
               {"q": "x", "a": "y", "crash": True}]
    report, prefix = run_mode(qwen.path, tmp_path, "test-chat", records)
    tokens, mask = IndexedDataset(f"{prefix}_text_document"), IndexedDataset(f"{prefix}_loss_mask_document")
    assert mask.index.dtype == np.uint8
    assert tokens.document_indices.tolist() == mask.document_indices.tolist() == [0, 2, 4, 6]
    assert tokens.sequence_lengths.tolist() == mask.sequence_lengths.tolist()
    prompt = [151644] + qwen.encode_raw("user\nhi") + [151645]
    assert tokens[0].tolist() == prompt and tokens[1].tolist() == qwen.encode_raw("hello!") + [151643]
    assert mask[0].tolist() == [0] * len(prompt) and mask[1].tolist() == [1] * (len(tokens[1]))
    assert report["skipped"]["by_reason"] == {"missing field 'q'": 1, "mode_error:ZeroDivisionError": 1}
    assert report["documents"] == 3 and report["sequences"] == 6
    bug = next(e for e in report["skipped_examples"] if e["reason"].startswith("mode_error"))
    assert bug["line"] == 4 and "mode bug" in bug["detail"]


def test_strict_stops_at_a_mode_error_naming_the_line(qwen, tmp_path):
    with pytest.raises(RuntimeError, match=r"out.jsonl:2: mode 'test-chat' failed: mode bug"):
        run_mode(qwen.path, tmp_path, "test-chat", [{"q": "a", "a": "b"}, {"q": "x", "a": "y", "crash": True}],
                 "--strict")
    assert not (tmp_path / "out_text_document.idx").exists()
