"""Train a small Qwen2-shaped byte-level BPE (for the CPU demo and tests) and save it as a HF tokenizer dir."""

import argparse
import sys
from pathlib import Path

from megatron_qwen.data.tokenizer.train import (
    QWEN_CODER_ADDED_TOKENS,
    added_tokens_like,
    iter_texts,
    save_hf,
    train_bpe,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True, help="text files or directories to learn from")
    p.add_argument("--output-dir", required=True, help="where to write the tokenizer directory")
    p.add_argument("--vocab-size", type=int, default=4096, help="learned entries (added tokens come after)")
    p.add_argument("--extensions", nargs="+", default=[".py", ".md", ".txt"], help="file types read from directories")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--like", help="copy the added tokens (and their order) of this tokenizer dir instead of Qwen2.5-Coder's")
    args = p.parse_args(argv)
    added = added_tokens_like(args.like) if args.like else QWEN_CODER_ADDED_TOKENS
    tok = train_bpe(iter_texts([Path(x) for x in args.input], tuple(args.extensions)), args.vocab_size, added,
                    args.min_frequency)
    out = save_hf(tok, args.output_dir)
    print(f"wrote {out} ({tok.get_vocab_size()} entries incl. {len(added)} added tokens)", file=sys.stderr)
    return 0

