"""Needle in the Code over a grid of lengths × depths for a checkpoint (see megatron_qwen.eval.needle).

  megatron-qwen needle --checkpoint runs/x/long_context --tokenizer ../shared/fixtures/qwen2.5-coder-tokenizer \
      --haystack path/to/repo --lengths 8192,32768,131072 --depths 0,0.25,0.5,0.75,1 --output runs/x/needle

--checkpoint: an iteration dir or a checkpoint root with a `latest` marker (architecture from its record);
--haystack: a directory (its *.py files, sorted) or one file; --byte-tokenizer: ids are UTF-8 bytes (tiny
models). --yarn-factor F enables YaRN (original context = the checkpoint's max_position_embeddings).
Runs on one process (TP = PP = CP = 1); writes results.json and heatmap.png.
"""

import argparse
import dataclasses
from pathlib import Path


class ByteTokenizer:
    """ids = UTF-8 bytes; for tiny test models whose vocabulary is at least 256."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", help="Hugging Face tokenizer directory")
    tok.add_argument("--byte-tokenizer", action="store_true")
    p.add_argument("--haystack", required=True)
    p.add_argument("--lengths", required=True, help="comma-separated prompt lengths in tokens")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--yarn-factor", type=float, default=None)
    p.add_argument("--max-files", type=int, default=200)
    return p.parse_args(argv)


def read_haystack(path: str, max_files: int) -> list[str]:
    root = Path(path)
    if root.is_file():
        return [root.read_text(errors="replace")]
    if not root.is_dir():
        raise FileNotFoundError(f"--haystack {path}: no such file or directory")
    files = sorted(root.rglob("*.py"))[:max_files]
    if not files:
        raise FileNotFoundError(f"--haystack {path}: no *.py files")
    return [f.read_text(errors="replace") for f in files]


def main(argv=None) -> int:
    a = parse(argv)
    from megatron_qwen.checkpointing.weights import load_model_checkpoint, read_record
    from megatron_qwen.config import ParallelConfig, YarnConfig
    from megatron_qwen.eval.generate import greedy_generate
    from megatron_qwen.eval.needle import run_grid, write_outputs
    from megatron_qwen.model.build import build_model
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.checkpoint import resolve_checkpoint

    lengths = [int(x) for x in a.lengths.split(",")]
    depths = [float(x) for x in a.depths.split(",")]
    ckpt = resolve_checkpoint(a.checkpoint)
    model_cfg, _ = read_record(ckpt)
    if a.yarn_factor:
        yarn = YarnConfig(enabled=True, factor=a.yarn_factor,
                          original_max_position_embeddings=model_cfg.max_position_embeddings)
        model_cfg = dataclasses.replace(model_cfg, yarn=yarn,
                                        max_position_embeddings=int(model_cfg.max_position_embeddings * a.yarn_factor))
    parallel = ParallelConfig()
    init_distributed(parallel, model_cfg, max(lengths))
    (model,) = build_model(model_cfg, parallel, max(lengths))
    load_model_checkpoint([model], ckpt)
    if a.byte_tokenizer:
        tok = ByteTokenizer()
        encode, decode, stops = tok.encode, tok.decode, frozenset()
    else:
        from megatron_qwen.data.tokenizer.qwen import load_tokenizer

        tok = load_tokenizer(a.tokenizer)
        encode, decode, stops = tok.encode_raw, tok.decode, frozenset({tok.eod})
    results = run_grid(encode, decode, lambda ids, n: greedy_generate(model, ids, n, stops),
                       read_haystack(a.haystack, a.max_files), lengths, depths, seed=a.seed)
    json_path, png_path = write_outputs(results, lengths, depths, a.output,
                                        meta=dict(checkpoint=str(ckpt), model=model_cfg.name))
    acc = sum(r.correct for r in results) / len(results)
    print(f"needle: {len(results)} cells, exact match {acc:.1%}; wrote {json_path} and {png_path}")
    return 0

