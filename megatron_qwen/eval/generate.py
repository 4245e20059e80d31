"""Generation for evaluations and serving: text in, text out, on a model loaded from a checkpoint or an HF dir.

The decoding itself (KV cache, TP/PP, sampling, stops) is `megatron_qwen.model.generation`, on the model
layer so the trainer can use it on its own chunks; this module adds what needs the layers above it:

- `Generator(chunks, tokenizer)`: encodes prompts (text, or ids), splits them into batches of similar
  length (sorted, so little padding is fed), decodes the results, keeps the caller's order.
- `load_model(checkpoint=... | hf=...)`: builds this rank's chunks at the current layout and loads a
  Megatron checkpoint (any layout: dist-checkpointing reshards) or imports a Hugging Face directory.
- `greedy_generate(model, prompt, n, stop_ids)`: the old single-prompt helper (needle), now KV-cached.

Every call is collective over the model-parallel group (docs/generation.md).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_qwen.model.generation import Generation, KVCacheDecoder, SamplingParams

__all__ = ["Generation", "Generator", "LoadedModel", "SamplingParams", "greedy_generate", "load_model"]


class Generator:
    """Text or id prompts -> Generations, in batches of at most `batch_size` prompts.

    `tokenizer` needs `decode(ids)` and `encode_raw(text)` (QwenTokenizer) or `encode(text)`; without one
    only id prompts are accepted and `Generation.text` is None.

    `data_parallel=True` (every rank of the job calls with the same prompts): each data-parallel replica
    takes every dp-th prompt, and the results are all-gathered, so every rank returns all of them. Without
    it each replica computes every prompt (what a server or a one-replica job wants).
    """

    def __init__(self, chunks, tokenizer=None, vocab_size: int | None = None, max_sequence_length: int | None = None,
                 batch_size: int = 8, data_parallel: bool = False):
        self.decoder = KVCacheDecoder(chunks, vocab_size=vocab_size, max_sequence_length=max_sequence_length)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.data_parallel = data_parallel

    def _shared(self, items: Sequence, work) -> list:
        """work(this replica's items, replica index) -> their results; with data_parallel, the items are split
        over the data-parallel replicas and every rank gets all results, in the order of `items`."""
        import torch.distributed as dist
        from megatron.core import parallel_state

        if not self.data_parallel or not dist.is_initialized():
            return work(list(items), 0)
        group = parallel_state.get_data_parallel_group()
        dp, rank = dist.get_world_size(group), dist.get_rank(group)
        if dp == 1:
            return work(list(items), 0)
        mine = work(list(items[rank::dp]), rank)
        parts: list = [None] * dp
        dist.all_gather_object(parts, mine, group=group)
        out = [None] * len(items)
        for r, part in enumerate(parts):
            out[r::dp] = part
        return out

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer")
        return encode_with_controls(self.tokenizer, text)

    def nll(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, int]]:
        """Collective: (summed negative log-likelihood, predicted tokens) per id sequence, in batches."""
        def work(seqs, replica):
            out: list[tuple[float, int]] = []
            for b in range(0, len(seqs), self.batch_size):
                out += self.decoder.sequence_nll(seqs[b : b + self.batch_size])
            return out

        return self._shared(list(sequences), work)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def generate(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None,
                 progress: bool = False) -> list[Generation]:
        """Collective: one Generation per prompt, in order."""
        params = params or SamplingParams()
        ids = [self.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        return self._shared(ids, lambda mine, replica: self._generate(mine, params, progress, replica))

    def _generate(self, ids: list[list[int]], params: SamplingParams, progress: bool, replica: int = 0
                  ) -> list[Generation]:
        from tqdm import tqdm

        decode = self.decode if self.tokenizer is not None else None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[Generation | None] = [None] * len(ids)
        bar = tqdm(total=len(ids), desc="generate", unit="prompt", disable=not progress)
        for b in range(0, len(order), self.batch_size):
            part = order[b : b + self.batch_size]
            # A seeded request: each batch (and data-parallel replica) draws from its own seed, derived from the
            # request's, so batches do not repeat each other's draws (n samples of a prompt stay different).
            batch_params = params
            if params.seed is not None and (b or replica):
                from dataclasses import replace

                batch_params = replace(params, seed=params.seed + b + 1_000_003 * replica)
            for i, g in zip(part, self.decoder.generate_ids([ids[i] for i in part], batch_params, decode)):
                out[i] = g
            bar.update(len(part))
        bar.close()
        return out  # type: ignore[return-value]


@functools.lru_cache(maxsize=8)
def _control_pattern(tokenizer):
    import re

    from megatron_qwen.data.tokenizer.qwen import CHAT_TOKENS, EOD_TOKEN, FIM_PAD, FIM_TOKENS, REPO_TOKENS

    known = []
    for name in (*FIM_TOKENS, *CHAT_TOKENS, *REPO_TOKENS, FIM_PAD, EOD_TOKEN):
        try:
            tokenizer.token_id(name)
            known.append(name)
        except (KeyError, AttributeError):
            pass
    return re.compile("(" + "|".join(map(re.escape, known)) + ")") if known else None


def encode_with_controls(tokenizer, text: str) -> list[int]:
    """Text -> ids; the model's control tokens written in the text (`<|fim_prefix|>`, `<|im_start|>`, ...)
    become their ids, everything else is encoded raw (so a FIM or ChatML prompt string works)."""
    enc = getattr(tokenizer, "encode_raw", None) or tokenizer.encode
    pattern = _control_pattern(tokenizer)
    if pattern is None:
        return list(enc(text))
    ids: list[int] = []
    for i, piece in enumerate(pattern.split(text)):
        if i % 2:
            ids.append(tokenizer.token_id(piece))
        elif piece:
            ids.extend(enc(piece))
    return ids


def greedy_generate(model, prompt: list[int], max_new_tokens: int, stop_ids: frozenset[int] = frozenset()) -> list[int]:
    """The greedy continuation of `prompt` (at most max_new_tokens ids, ending early at a stop id, which is
    included, as before the KV cache). Collective over the model-parallel group."""
    chunks = model if isinstance(model, (list, tuple)) else [model]
    g = KVCacheDecoder(chunks).generate_ids([prompt], SamplingParams(max_tokens=max_new_tokens,
                                                                      stop_ids=frozenset(stop_ids)))[0]
    return g.tokens + ([g.stop_id] if g.stop_id is not None else [])


@dataclass
class LoadedModel:
    chunks: list
    model: object  # ModelConfig
    vocab_size: int  # the tokenizer's vocabulary (before megatron's padding)
    source: str


def ensure_distributed(parallel=None, model=None) -> None:
    """Start the process group and megatron's parallel state when absent: as the world the environment
    describes (torchrun/Slurm variables), else as a world of one on a free loopback port."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.platform.spawn import free_port

    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        return
    if "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    init_distributed(parallel or ParallelConfig(), model)


def _layout():
    from megatron.core import parallel_state

    from megatron_qwen.config import ParallelConfig

    return ParallelConfig(
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        virtual_pipeline_model_parallel_size=parallel_state.get_virtual_pipeline_model_parallel_world_size(),
    )


def load_model(checkpoint: str | Path | None = None, hf: str | Path | None = None,
               dtype: torch.dtype = torch.float32, seq_length: int = 0) -> LoadedModel:
    """Collective (parallel state initialized): this rank's chunks at the current layout, with weights from a
    Megatron checkpoint (an iteration dir or a root with a `latest` marker) or a Hugging Face directory
    (imported into a temporary Megatron checkpoint, then loaded)."""
    import torch.distributed as dist

    from megatron_qwen.checkpointing.weights import load_model_checkpoint, read_record
    from megatron_qwen.model.build import build_model

    if (checkpoint is None) == (hf is None):
        raise ValueError("give exactly one of a checkpoint or a Hugging Face directory")
    parallel = _layout()
    if hf is not None:
        from megatron_qwen.convert.importer import import_in_group

        holder = [tempfile.mkdtemp(prefix="mq-hf-import-") if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        ckpt = Path(holder[0]) / "ckpt"
        try:
            import_in_group(str(hf), str(ckpt), parallel, dtype=dtype, show_progress=False)
            model, facts = read_record(ckpt)
            chunks = build_model(model, parallel, seq_length, params_dtype=dtype)
            load_model_checkpoint(chunks, ckpt)
        finally:
            dist.barrier()
            if dist.get_rank() == 0:
                import shutil

                shutil.rmtree(holder[0], ignore_errors=True)
        source = str(hf)
    else:
        from megatron_qwen.training.checkpoint import resolve_checkpoint

        ckpt = resolve_checkpoint(checkpoint)
        model, facts = read_record(ckpt)
        chunks = build_model(model, parallel, seq_length, params_dtype=dtype)
        load_model_checkpoint(chunks, ckpt)
        source = str(ckpt)
    for c in chunks:
        c.eval()
    return LoadedModel(chunks, model, int(facts.get("hf_vocab_size", model.vocab_size)), source)


def load_tokenizer_for(path: str | Path | None, hf: str | Path | None = None):
    """The QwenTokenizer of `path`, else of the HF model directory when it holds tokenizer files."""
    from megatron_qwen.data.tokenizer.qwen import load_tokenizer

    path = path or (hf if hf is not None and (Path(hf) / "tokenizer.json").is_file() else None)
    if path is None:
        raise ValueError("a tokenizer directory is needed (--tokenizer DIR)")
    return load_tokenizer(path)
