"""Train a small byte-level BPE shaped like Qwen2's, with Qwen2.5-Coder's added tokens in the same order.

Why it exists: the CPU demo and tests want a tokenizer with a few thousand entries (a tiny embedding),
but every format must still work: the same NFC normalizer, Qwen2's pre-tokenizer regex, byte-level BPE
(so the tiktoken fast path applies), and the 22 added tokens `<|endoftext|>` ... `<|file_sep|>` right
after the learned vocabulary, in Qwen's order and with Qwen's `special` flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_qwen.data.tokenizer.fast_encoder import QWEN2_PATTERN

# Qwen2.5-Coder's added tokens in id order, with whether each is marked special.
QWEN_CODER_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)


def added_tokens_like(tokenizer_dir: str | Path) -> tuple[tuple[str, bool], ...]:
    """The added tokens (content, special) of an existing Hugging Face tokenizer, in id order."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return tuple((t.content, bool(t.special)) for _, t in sorted(hf.added_tokens_decoder.items()))


def train_bpe(texts: Iterable[str], vocab_size: int, added: tuple[tuple[str, bool], ...] = QWEN_CODER_ADDED_TOKENS,
              min_frequency: int = 2):
    """A `tokenizers.Tokenizer`: NFC, Qwen2 split regex, byte-level BPE of `vocab_size` entries, then `added`."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    for content, special in added:
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    return tok


def save_hf(tok, out_dir: str | Path, eos: str = "<|endoftext|>") -> Path:
    """Save as a Hugging Face tokenizer directory that `load_tokenizer` (and AutoTokenizer) can read."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, clean_up_tokenization_spaces=False)
    hf.save_pretrained(str(out))
    return out


def iter_texts(paths: Iterable[Path], exts: tuple[str, ...]) -> Iterator[str]:
    """Texts of files (or of files under directories) with the given extensions; undecodable files skipped."""
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.suffix in exts) if path.is_dir() else [path]
        for f in files:
            try:
                yield f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
