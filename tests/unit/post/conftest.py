"""Fixtures of the post-training data tests: the real Qwen tokenizer, loaded once per session.

The Hugging Face raw encoder is used (fast=False): it is the reference the tiktoken path is proven
identical to at load time, and it loads in about a second instead of several.
"""

import pytest


@pytest.fixture(scope="session")
def tok(qwen_tokenizer_dir):
    from megatron_qwen.data.tokenizer import load_tokenizer

    return load_tokenizer(qwen_tokenizer_dir, fast=False)
