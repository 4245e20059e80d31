"""The tokenizer contract: control ids, raw encoding that never emits them, the verified fast path, fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_qwen.data.tokenizer.fast_encoder import (
    PROBES,
    build_gigatoken_encoder,
    build_tiktoken_encoder,
    choose_encoder,
)
from megatron_qwen.data.tokenizer.qwen import FIM_TOKENS, MissingTokenError, load_tokenizer
from tests.unit.data.helpers import stdlib_texts


def test_real_tokenizer_contract(qwen):
    assert qwen.vocab_size == 151665
    assert qwen.eod == 151643
    assert [qwen.token_id(t) for t in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|repo_name|>",
                                       "<|file_sep|>", "<|im_start|>", "<|im_end|>")] == [
        151659, 151660, 151661, 151663, 151664, 151644, 151645]
    assert qwen.encoder_name == "gigatoken"
    assert qwen.encode_raw("Hello world") == [9707, 1879]
    assert qwen.encode_raw_batch(["Hello world", ""]) == [[9707, 1879], []]
    tokens, offsets = qwen.encode_raw_flat(["Hello world", "", "Hello"])
    assert tokens.tolist() == [9707, 1879, 9707] and offsets.tolist() == [0, 2, 2, 3]


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


def test_literal_control_text_stays_text_on_every_encoder(qwen):
    """gigatoken and HF both parse added tokens when they know them: ours are built without, so text stays text."""
    added = sorted(qwen.files.added, key=qwen.files.added.get)
    texts = ["".join(added), "x = '" + "' + '".join(added) + "'\n", "<|endoftext|>", "a<|fim_prefix|>b" * 3]
    tokens, offsets = qwen.encode_raw_flat(texts)
    assert tokens.size and max(tokens) < qwen.eod
    for k, text in enumerate(texts):
        assert qwen.decode(tokens[offsets[k]:offsets[k + 1]]) == text
        assert np.array_equal(tokens[offsets[k]:offsets[k + 1]], qwen._hf_raw.encode(text))
    tik = build_tiktoken_encoder(qwen.files)
    assert all(np.array_equal(tik.encode(t), qwen._hf_raw.encode(t)) for t in texts)


def test_gigatoken_batches_equal_hf_on_stdlib(qwen):
    texts = stdlib_texts(80) + ["", "\u00e9e\u0301", json.loads('"lone \\udc80 surrogate"')]
    tokens, offsets = qwen.encode_raw_flat(texts)
    for k, text in enumerate(texts):
        assert np.array_equal(tokens[offsets[k]:offsets[k + 1]], qwen._hf_raw.encode(text)), text[:80]


def test_tiktoken_stays_an_exact_fallback(qwen):
    tik = build_tiktoken_encoder(qwen.files)
    assert choose_encoder(qwen.files, qwen._hf_raw, candidates=(build_tiktoken_encoder,)).name == "tiktoken"
    for text in stdlib_texts(10):
        assert np.array_equal(tik.encode(text), qwen._hf_raw.encode(text))


def test_fast_path_falls_back_with_one_warning_when_it_differs(qwen, recwarn):
    class Shifted:
        name = "shifted"

        def encode(self, text):
            return qwen._hf_raw.encode(text) + 1

        def encode_flat(self, texts):
            return qwen._encoder.encode_flat(texts)

    broken = lambda files: Shifted()  # noqa: E731
    chosen = choose_encoder(qwen.files, qwen._hf_raw, candidates=(broken, build_tiktoken_encoder))
    assert chosen.name == "tiktoken"
    assert [str(w.message) for w in recwarn] and len(recwarn) == 1
    assert "shifted on 'Hello world'" in str(recwarn[0].message) and "using tiktoken" in str(recwarn[0].message)
    recwarn.clear()
    assert choose_encoder(qwen.files, qwen._hf_raw, candidates=(broken, broken)) is qwen._hf_raw
    assert len(recwarn) == 1 and "using hf" in str(recwarn[0].message)
    recwarn.clear()
    assert choose_encoder(qwen.files, qwen._hf_raw, candidates=(lambda f: None,)) is qwen._hf_raw
    assert len(recwarn) == 0  # a candidate that does not fit the tokenizer's shape is not a failure


def test_trained_small_tokenizer_has_qwen_added_tokens_in_order(small_tokenizer_dir, qwen):
    small = load_tokenizer(small_tokenizer_dir)
    assert small.vocab_size == 622
    assert build_tiktoken_encoder(small.files) is not None and small.encoder_name == "gigatoken"
    assert build_gigatoken_encoder(small.files) is not None
    real = [t.content for _, t in sorted(qwen.hf.added_tokens_decoder.items())]
    ours = [t.content for _, t in sorted(small.hf.added_tokens_decoder.items())]
    assert ours == real
    assert small.eod == 600 and small.token_id("<|file_sep|>") == 621
    specials = {t.content: t.special for t in small.hf.added_tokens_decoder.values()}
    assert specials["<|im_start|>"] and not specials["<|fim_prefix|>"]
    text = "def f(x):\n    return '<|fim_prefix|>' + x\n"
    assert small.decode(small.encode_raw(text)) == text and max(small.encode_raw(text)) < 600


def test_directory_without_tokenizer_json_is_read_only_for_qwen2_classes(tmp_path):
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1, "ab": 2}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    with pytest.raises(ValueError, match=rf"{tmp_path.name}.*'LlamaTokenizer' is not one whose vocab.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(ValueError, match=r"no tokenizer.json, nor vocab.json \+ merges.txt"):
        load_tokenizer(tmp_path)


def test_qwen2_directory_reads_like_transformers(qwen):
    """The fixture ships vocab.json + merges.txt only: our reading of it must be transformers' reading."""
    assert not (qwen.path / "tokenizer.json").exists()
    assert qwen.vocab_size == len(qwen.hf)
    assert qwen.files.added == {t.content: i for i, t in qwen.hf.added_tokens_decoder.items()}
    for text in stdlib_texts(5) + list(PROBES):
        expected = qwen.hf(text, add_special_tokens=False).input_ids
        if "<|" not in text:
            assert qwen._hf_raw.encode(text).tolist() == expected
        assert qwen.decode(expected) == qwen.hf.decode(expected, skip_special_tokens=False)


def test_probe_answers_are_recorded_and_a_later_choice_checks_against_them(qwen, tmp_path, monkeypatch, recwarn):
    """The first choice builds the reference and records its answers; the next one builds no reference and
    still runs the candidate on every probe: tampered answers make it fall back (so the record is what it
    is checked against), an unreadable record counts as absent."""
    monkeypatch.setenv("MEGATRON_QWEN_CACHE_DIR", str(tmp_path))
    built = []

    def reference():
        built.append(1)
        return qwen._hf_raw

    assert choose_encoder(qwen.files, reference, record=True).name == "gigatoken" and built
    (record,) = (tmp_path / "probes").glob("*.json")
    built.clear()
    assert choose_encoder(qwen.files, reference, record=True).name == "gigatoken" and not built
    answers = json.loads(record.read_text())
    answers["ids"][3] = [a + 1 for a in answers["ids"][3]]
    record.write_text(json.dumps(answers))
    assert choose_encoder(qwen.files, reference, record=True).name == "hf" and built
    assert len(recwarn) == 1 and "gigatoken on" in str(recwarn[0].message)
    record.write_text("{not json")
    built.clear()
    assert choose_encoder(qwen.files, reference, record=True).name == "gigatoken" and built
    assert json.loads(record.read_text())["ids"][3] == [int(i) for i in qwen._hf_raw.encode(PROBES[3])]
