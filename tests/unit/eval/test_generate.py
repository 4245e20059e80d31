"""Prompt encoding for generation: control tokens written as text become their ids, the rest is raw text."""

from __future__ import annotations

from megatron_qwen.eval.generate import encode_with_controls


def test_control_tokens_in_prompt_text_become_their_ids(small_tokenizer_dir):
    from megatron_qwen.data.tokenizer.qwen import load_tokenizer

    tok = load_tokenizer(small_tokenizer_dir)
    ids = encode_with_controls(tok, "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y<|fim_middle|>")
    fp, fs, fm = (tok.token_id(t) for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    assert ids == [fp, *tok.encode_raw("def f(x):\n"), fs, *tok.encode_raw("\n    return y"), fm]
    plain = "no control tokens <|not_one|>"
    assert encode_with_controls(tok, plain) == tok.encode_raw(plain)
