"""Dataset blends (code : text : math = 70 : 20 : 10) and a check that a run samples tokens in those shares.

Why it exists: the stage-1 mix is a list `[weight, prefix, weight, prefix, ...]` (DataConfig.blend, the
format megatron-core's `get_blend_from_list` reads) that `BlendedMegatronDatasetBuilder` turns into a
`BlendedDataset`. Megatron draws whole samples of `seq_length + 1` tokens from each source, so the token
shares of a run equal the sample shares; `sampled_token_shares` measures them from the built dataset.

    python -m megatron_qwen.data.blend --config hydra/data/blend_70_20_10.yaml --samples 20000
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def parse_blend(blend: Sequence, check_files: bool = True) -> tuple[list[str], list[float]]:
    """`[w1, p1, w2, p2, ...]` -> (prefixes, weights normalized to 1); clear errors for bad entries."""
    items = list(blend)
    if not items or len(items) % 2:
        raise ValueError(f"data.blend must be [weight, prefix, weight, prefix, ...], got {items}")
    weights, prefixes = items[0::2], [str(p) for p in items[1::2]]
    for w, p in zip(weights, prefixes):
        if not isinstance(w, int | float) or w <= 0:
            raise ValueError(f"data.blend: weight of {p} must be a positive number, got {w!r}")
        if check_files:
            missing = [f"{p}.{ext}" for ext in ("bin", "idx") if not os.path.exists(f"{p}.{ext}")]
            if missing:
                raise FileNotFoundError(f"data.blend: {missing} not found (run tools/preprocess_data.py first)")
    total = float(sum(weights))
    return prefixes, [w / total for w in weights]


def load_blend(path: str | Path) -> list:
    """The `blend` list of a Hydra data config file (interpolations such as ${oc.env:...} resolved)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    node = cfg.get("data", cfg)
    if "blend" not in node:
        raise KeyError(f"{path} has no 'blend' entry")
    return list(OmegaConf.to_container(node, resolve=True)["blend"])


def build_blended(prefixes: list[str], weights: list[float], seq_length: int, num_samples: int, eod: int,
                  seed: int = 1234, cache_dir: str | None = None, vocab_size: int = 151665):
    """The train `BlendedDataset` megatron-core builds for this blend (on CPU, no distributed init needed)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    tokenizer = SimpleNamespace(eod=eod, pad=eod, vocab_size=vocab_size, unique_identifiers={"class": "blend-check"})
    config = GPTDatasetConfig(random_seed=seed, sequence_length=seq_length, blend=(prefixes, weights),
                              split="100,0,0", tokenizer=tokenizer, reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, path_to_cache=cache_dir,
                              allow_ambiguous_pad_tokens=True)
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config)
    return builder.build()[0]


def sampled_token_shares(blended, seq_length: int) -> list[float]:
    """Share of sampled tokens per blend entry (each sample is seq_length + 1 tokens from one source)."""
    counts = np.bincount(np.asarray(blended.dataset_index), minlength=len(blended.datasets))
    tokens = counts * (seq_length + 1)
    return (tokens / tokens.sum()).tolist()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Show the token shares a training run would sample from a blend.")
    p.add_argument("--config", required=True, help="Hydra data config with a `blend` list")
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--eod", type=int, default=151643)
    args = p.parse_args(argv)
    prefixes, weights = parse_blend(load_blend(args.config))
    blended = build_blended(prefixes, weights, args.seq_length, args.samples, args.eod)
    for prefix, w, s in zip(prefixes, weights, sampled_token_shares(blended, args.seq_length)):
        print(f"{prefix}: weight {w:.3f}, sampled token share {s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
