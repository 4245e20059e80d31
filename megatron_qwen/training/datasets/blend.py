"""Dataset blends (code : text : math = 70 : 20 : 10) and a check that a run samples tokens in those shares.

Why it exists: the stage-1 mix is a list `[weight, prefix, weight, prefix, ...]` (DataConfig.blend, the
format megatron-core's `get_blend_from_list` reads) that `BlendedMegatronDatasetBuilder` turns into a
`BlendedDataset`. Megatron draws whole samples of `seq_length + 1` tokens from each source, so the token
shares of a run equal the sample shares; `sampled_token_shares` measures them from the built dataset.

    megatron-qwen blend-shares --config hydra/data/blend_70_20_10.yaml --samples 20000
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def parse_blend(blend: Sequence | None, check_files: bool = False) -> list[tuple[float, str]]:
    """`data.blend` as [(weight, prefix)]: Megatron's `[w1, p1, w2, p2, ...]`, or `[p1, p2, ...]` (equal
    weights); None or [] -> []. Weights must be > 0; with `check_files`, each prefix's .bin/.idx must exist."""
    if not blend:
        return []
    items = list(blend)
    try:
        weights = [float(x) for x in items[0::2]]
    except (TypeError, ValueError):
        pairs = [(1.0, str(p)) for p in items]
    else:
        if len(items) % 2:
            raise ValueError(f"data.blend must be [weight, prefix, weight, prefix, ...] or [prefix, ...], got {items}")
        pairs = list(zip(weights, [str(p) for p in items[1::2]]))
    for w, prefix in pairs:
        if w <= 0:
            raise ValueError(f"data.blend: weight of {prefix} must be a positive number, got {w!r}")
        if check_files:
            missing = [f"{prefix}.{ext}" for ext in ("bin", "idx") if not os.path.exists(f"{prefix}.{ext}")]
            if missing:
                raise FileNotFoundError(f"data.blend: {missing} not found (run `megatron-qwen preprocess` first)")
    return pairs


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
    pairs = parse_blend(load_blend(args.config), check_files=True)
    prefixes, total = [p for _, p in pairs], sum(w for w, _ in pairs)
    weights = [w / total for w, _ in pairs]
    blended = build_blended(prefixes, weights, args.seq_length, args.samples, args.eod)
    for prefix, w, s in zip(prefixes, weights, sampled_token_shares(blended, args.seq_length)):
        print(f"{prefix}: weight {w:.3f}, sampled token share {s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
