"""Convert Qwen2.5(-Coder) checkpoints between Hugging Face format and megatron-core distributed checkpoints.

    import-hf  --hf-dir DIR --out CKPT [--tp N] [--pp N] [--vpp N] [--dtype auto|bf16|fp32] [--allow-pickle]
    export-hf  --ckpt CKPT --out DIR [--dtype bf16|fp32] [--tokenizer DIR] [--max-shard-size 5GB]
    export-lora --ckpt ADAPTER_CKPT --out DIR [--merged] [--base CKPT] [--dtype bf16|fp32] [--tokenizer DIR]
    verify     --hf-dir DIR --ckpt CKPT [--tp N] [--pp N] [--batch 2] [--seq 32] [--tolerance 1e-4]

Exit status: 0 success; 1 verify found differences above its tolerance; 2 bad input (the message names
the file, tensor or field). The logic lives in `megatron_qwen.convert`; this file only parses flags.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

DTYPE_CHOICES = ("bf16", "fp32", "fp16")


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000; '500MiB', '1e9' and plain byte counts work too."""
    m = re.fullmatch(r"\s*([0-9.e+]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r} (e.g. 5GB, 500MB, 2GiB)")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    return int(value * base ** " KMGT".index(unit or " "))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("import-hf", help="HF directory -> megatron-core distributed checkpoint")
    imp.add_argument("--hf-dir", required=True, help="HF model directory (config.json + *.safetensors)")
    imp.add_argument("--out", required=True, help="checkpoint directory to create (must not exist or be empty)")
    imp.add_argument("--tp", type=int, default=1, help="tensor-parallel size to write the shards for")
    imp.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    imp.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per rank")
    imp.add_argument("--dtype", choices=("auto", *DTYPE_CHOICES), default="auto",
                     help="checkpoint dtype (auto: the HF weights' dtype, bit-exact)")
    imp.add_argument("--pad-vocab-to", type=int, default=1, metavar="N",
                     help="pad the embedding rows to a multiple of N (zeros; export drops them again)")
    imp.add_argument("--allow-pickle", action="store_true",
                     help="accept pytorch_model*.bin (loaded with torch.load(weights_only=True))")
    imp.add_argument("--no-progress", action="store_true")

    exp = sub.add_parser("export-hf", help="megatron-core distributed checkpoint -> HF directory")
    exp.add_argument("--ckpt", required=True, help="checkpoint written by import-hf or the trainer")
    exp.add_argument("--out", required=True, help="HF directory to create (must not exist or be empty)")
    exp.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="output dtype (default: the checkpoint's)")
    exp.add_argument("--tokenizer", default=None, help="directory whose tokenizer files are copied alongside")
    exp.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"), help="per safetensors file")
    exp.add_argument("--no-progress", action="store_true")

    lo = sub.add_parser("export-lora", help="LoRA adapter checkpoint -> HF PEFT adapter dir, or (--merged) a plain "
                        "HF checkpoint with the adapters folded into the base weights")
    lo.add_argument("--ckpt", required=True, help="an iteration dir of an sft_lora / dpo_lora run (adapters only)")
    lo.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    lo.add_argument("--merged", action="store_true",
                    help="write base + adapters as a plain HF checkpoint instead of adapter_config.json + "
                         "adapter_model.safetensors")
    lo.add_argument("--base", default=None,
                    help="the base checkpoint the adapters apply to (default: the one the checkpoint records)")
    lo.add_argument("--base-name", default=None,
                    help="adapter_config.json base_model_name_or_path (default: the base checkpoint's path)")
    lo.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="output dtype (default: the checkpoint's)")
    lo.add_argument("--tokenizer", default=None, help="with --merged: tokenizer files copied alongside")
    lo.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"), help="with --merged")
    lo.add_argument("--no-progress", action="store_true")

    ver = sub.add_parser("verify", help="compare transformers' and Megatron's logits and per-token loss")
    ver.add_argument("--hf-dir", required=True)
    ver.add_argument("--ckpt", required=True)
    ver.add_argument("--tp", type=int, default=1)
    ver.add_argument("--pp", type=int, default=1)
    ver.add_argument("--batch", type=int, default=2)
    ver.add_argument("--seq", type=int, default=32)
    ver.add_argument("--seed", type=int, default=1234)
    ver.add_argument("--tolerance", type=float, default=None,
                     help="max allowed absolute difference of logits and of per-token loss (default 1e-4)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from megatron_qwen.convert import exporter, importer, lora_export, verify

    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    start = time.perf_counter()
    try:
        if args.command == "import-hf":
            summary = importer.import_hf(
                args.hf_dir, args.out, tp=args.tp, pp=args.pp, vpp=args.vpp,
                dtype=None if args.dtype == "auto" else dtypes[args.dtype], allow_pickle=args.allow_pickle,
                pad_vocab_to=args.pad_vocab_to, show_progress=not args.no_progress,
            )
            print(f"wrote {args.out}: {summary['bytes'] / 1e6:.1f} MB on rank 0, dtype {summary['dtype']}, "
                  f"layout tp={args.tp} pp={args.pp} vpp={args.vpp} ({time.perf_counter() - start:.1f} s)")
        elif args.command == "export-hf":
            summary = exporter.export_hf(args.ckpt, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                                         max_shard_bytes=args.max_shard_size, show_progress=not args.no_progress)
            print(f"wrote {args.out}: {len(summary['files'])} safetensors file(s), {summary['bytes'] / 1e6:.1f} MB, "
                  f"dtype {summary['dtype']}, tokenizer files {summary['tokenizer_files'] or 'none'} "
                  f"({time.perf_counter() - start:.1f} s)")
        elif args.command == "export-lora":
            summary = lora_export.export_lora(
                args.ckpt, args.out, merged=args.merged, base=args.base, dtype=args.dtype, tokenizer=args.tokenizer,
                base_name=args.base_name, max_shard_bytes=args.max_shard_size, show_progress=not args.no_progress)
            what = "merged HF checkpoint" if args.merged else f"PEFT adapter ({summary['tensors']} tensors)"
            print(f"wrote {args.out}: {what}, dtype {summary['dtype']}, base {summary['base']} "
                  f"({time.perf_counter() - start:.1f} s)")
        else:
            tolerance = verify.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
            result = verify.verify(args.hf_dir, args.ckpt, tp=args.tp, pp=args.pp, batch=args.batch,
                                   seq=args.seq, seed=args.seed, tolerance=tolerance)
            print(result.report())
            if not result.ok:
                print("error: Megatron and transformers disagree above the tolerance; the conversion is wrong "
                      "(or the checkpoint was changed after import)", file=sys.stderr)
                return 1
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

