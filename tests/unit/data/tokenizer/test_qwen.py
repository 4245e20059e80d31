"""The tokenizer contract: control ids, raw encoding that never emits them, the verified fast path, fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_qwen.data.tokenizer.fast_encoder import PROBES, build_fast_encoder
from megatron_qwen.data.tokenizer.qwen import FIM_TOKENS, MissingTokenError, load_tokenizer
from tests.unit.data.helpers import stdlib_texts


def test_real_tokenizer_contract(qwen):
    assert qwen.vocab_size == 151665
    assert qwen.eod == 151643
    assert [qwen.token_id(t) for t in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|repo_name|>",
                                       "<|file_sep|>", "<|im_start|>", "<|im_end|>")] == [
        151659, 151660, 151661, 151663, 151664, 151644, 151645]
    assert qwen.encoder_name == "tiktoken"
    assert qwen.encode_raw("Hello world") == [9707, 1879]
    assert qwen.encode_raw_batch(["Hello world", ""]) == [[9707, 1879], []]


def test_encode_raw_never_emits_control_ids(qwen):
    added = [t.content for t in qwen.hf.added_tokens_decoder.values()]
    text = "x = '" + "' + '".join(added) + "'\n"
    ids = qwen.encode_raw(text)
    assert max(ids) < 151643
    assert qwen.decode(ids) == text
    # the plain HF call would have turned them into control ids: that is what encode_raw must avoid
    assert max(qwen.hf(text, add_special_tokens=False).input_ids) >= 151643


def test_missing_token_error_names_directory_and_token(qwen):
    with pytest.raises(MissingTokenError, match=r"qwen2.5-coder-tokenizer.*'<\|nope\|>'"):
        qwen.token_id("<|nope|>")


def test_load_fails_clearly_when_format_tokens_are_missing(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    hf.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(tmp_path)  # EOD alone is enough for plain mode
    assert loaded.encoder_name == "hf"  # not byte-level: no fast path
    with pytest.raises(MissingTokenError, match=tmp_path.name + r" lacks \['<\|fim_prefix\|>'"):
        load_tokenizer(tmp_path, require=FIM_TOKENS)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_tokenizer(tmp_path / "does-not-exist")


def test_fast_encoder_equals_hf_on_probes_and_stdlib(qwen):
    texts = list(PROBES) + stdlib_texts(30)
    for text in texts:
        assert np.array_equal(qwen.encode_raw_np(text), qwen._hf_raw.encode(text)), text[:80]
        if "<|" not in text:  # the plain HF call parses literal control tokens (see the test above)
            assert qwen.encode_raw(text) == qwen.hf(text, add_special_tokens=False).input_ids


def test_lone_surrogates_encode_like_hf_path(qwen):
    text = json.loads('"a\\ud800b"')
    assert qwen.encode_raw(text) == qwen._hf_raw.encode(text).tolist() == qwen.encode_raw("a\ufffdb")


def test_fast_path_falls_back_with_a_warning_when_it_differs(qwen, monkeypatch):
    import megatron_qwen.data.tokenizer.fast_encoder as fe

    monkeypatch.setattr(fe, "build_fast_encoder", lambda hf: qwen._encoder)  # skip rebuilding the ranks

    class Shifted:
        def encode(self, text):
            return qwen._hf_raw.encode(text) + 1

    with pytest.warns(UserWarning, match="falling back to Hugging Face"):
        assert fe.try_fast_encoder(qwen.hf, Shifted(), source="test") is None
    assert fe.try_fast_encoder(qwen.hf, qwen._hf_raw) is qwen._encoder


def test_trained_small_tokenizer_has_qwen_added_tokens_in_order(small_tokenizer_dir, qwen):
    small = load_tokenizer(small_tokenizer_dir)
    assert small.vocab_size == 622
    assert build_fast_encoder(small.hf) is not None and small.encoder_name == "tiktoken"
    real = [t.content for _, t in sorted(qwen.hf.added_tokens_decoder.items())]
    ours = [t.content for _, t in sorted(small.hf.added_tokens_decoder.items())]
    assert ours == real
    assert small.eod == 600 and small.token_id("<|file_sep|>") == 621
    specials = {t.content: t.special for t in small.hf.added_tokens_decoder.values()}
    assert specials["<|im_start|>"] and not specials["<|fim_prefix|>"]
    text = "def f(x):\n    return '<|fim_prefix|>' + x\n"
    assert small.decode(small.encode_raw(text)) == text and max(small.encode_raw(text)) < 600
