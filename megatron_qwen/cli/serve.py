"""`megatron-qwen serve`: an OpenAI-compatible completions server on a Megatron checkpoint or an HF directory.

  megatron-qwen serve --checkpoint DIR | --hf DIR [--tokenizer DIR] [--host 127.0.0.1] [--port 8000]
  curl -s localhost:8000/v1/completions -d '{"prompt": "def fib(n):", "max_tokens": 64, "temperature": 0}'

Endpoints /v1/completions, /v1/chat/completions (the ChatML template, with the tokenizer template's
default system prompt unless --system-prompt is given) and /v1/models; see megatron_qwen/eval/server.py.
One process by default; started by torchrun/Slurm with --tp/--pp, rank 0 serves and the others follow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="megatron-qwen serve", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="Megatron checkpoint (an iteration dir or a root with a `latest` marker)")
    src.add_argument("--hf", help="Hugging Face model directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the --hf directory)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--model-name", default=None, help="the name /v1/models reports (default: the directory name)")
    p.add_argument("--system-prompt", default="auto", help="chat: 'auto' (the template's default), or the text")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        for path in (a.checkpoint, a.hf, a.tokenizer):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path}: no such file or directory")
        if not 0 <= a.port < 65536:
            raise ValueError(f"--port must be in [0, 65535], got {a.port}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.eval.generate import Generator, ensure_distributed, load_model, load_tokenizer_for
    from megatron_qwen.eval.server import Service, follow, serve

    try:
        tokenizer = load_tokenizer_for(a.tokenizer, a.hf)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    ensure_distributed(ParallelConfig(tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp))
    loaded = load_model(checkpoint=a.checkpoint, hf=a.hf)
    gen = Generator(loaded.chunks, tokenizer, vocab_size=loaded.vocab_size, batch_size=a.batch_size)
    name = a.model_name or Path(a.checkpoint or a.hf).resolve().name
    service = Service(gen, name, None if a.system_prompt == "none" else a.system_prompt)
    if dist.get_rank() != 0:
        follow(service)
        return 0

    def ready(address):
        print(f"serving {name} on http://{address[0]}:{address[1]}/v1 (Ctrl-C to stop)", flush=True)

    try:
        serve(service, a.host, a.port, ready=ready)
    except KeyboardInterrupt:
        pass
    return 0
