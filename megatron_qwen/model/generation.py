"""Batched autoregressive decoding with a KV cache over this rank's GPTModel chunks, at any TP/PP (and VPP).

The KV cache is megatron-core's own: a `StaticInferenceContext` handed to `GPTModel.forward`, in which
every attention layer keeps its keys and values (`Attention._adjust_key_value_for_inference`), so each
step after the first feeds one token per sequence. This module owns only the loop around it
(docs/generation.md says why not megatron-core's engines):

- Prompts of different lengths are left-padded into one [batch, longest + max_tokens] block: one prefill
  forward, then one token per row per step. A padding mask hides the pad keys and RoPE is taken at each
  row's own positions (megatron's rotary table re-indexed per row for the call), so every row sees exactly
  what it would see alone. With Transformer Engine's attention (GPU), which takes its mask type from the
  spec, the block is right-padded instead: the first forward runs the shortest prompt's length, then every
  step feeds one position per row (its own prompt token while its prompt lasts, its last generated token
  after), as megatron's static batching does; exact with a plain causal mask, but with extra steps.
- Pipeline parallelism: each chunk's activations [s, b, h] go to the next pipeline rank with a blocking
  send/recv (a chunk per virtual stage, in pipeline order); the last stage picks the next tokens and
  broadcasts them to the other pipeline ranks, so every rank holds every row's ids and decides the stops
  identically. Tensor parallelism: the output layer gathers the vocabulary-parallel logits.
- Greedy (temperature 0: argmax) or sampled (temperature, top-p, top-k, a seeded torch.Generator; the
  same seed and the same batch give the same ids). Stops: stop ids (not part of the output) and stop
  strings found in the decoded text (the text is cut before the stop), or max_tokens.

Everything here is collective over the model-parallel group: every TP and PP rank of a replica calls
`generate_ids` with the same prompts and parameters. Context parallelism is not supported (CP = 1);
sequence parallelism is switched off for the call and back on after it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a prompt. temperature 0 is greedy; stop strings need a `decode` function."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Generation:
    """One prompt's continuation: the generated ids (without a stop id), the text (cut before a stop
    string; None without a decode function) and why it ended ('stop' or 'length')."""

    tokens: list[int]
    text: str | None
    finish_reason: str
    stop_id: int | None = None


def _unwrap(chunk):
    while hasattr(chunk, "module") and not hasattr(chunk, "decoder"):
        chunk = chunk.module
    return chunk


def _earliest(text: str, stops: Sequence[str]) -> int:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else -1


def _select(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """[b, V] float logits -> [b] next ids."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        ordered = ordered.masked_fill(before >= params.top_p, float("-inf"))  # the top token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class KVCacheDecoder:
    """Decodes with this rank's chunks (GPTModel, possibly DDP/Float16-wrapped) in the current parallel state.

    `vocab_size`: ids at or above it are never produced (megatron pads the vocabulary to a multiple of the
    TP size; those rows are not tokens). `max_sequence_length`: prompt + max_tokens must fit.
    """

    def __init__(self, chunks: Sequence[torch.nn.Module], vocab_size: int | None = None,
                 max_sequence_length: int | None = None, left_padding: bool = True):
        self.chunks = [_unwrap(c) for c in chunks]
        self.left_padding = left_padding
        if parallel_state.get_context_parallel_world_size() != 1:
            raise NotImplementedError("generation runs with context_parallel_size = 1")
        first = self.chunks[0]
        self.config = first.config
        self.vocab_size = vocab_size
        self.max_sequence_length = max_sequence_length or first.max_sequence_length
        self.device = next(first.parameters()).device
        self.pp = parallel_state.get_pipeline_model_parallel_world_size()
        self.tp = parallel_state.get_tensor_model_parallel_world_size()

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode, megatron's InferenceMode, sequence parallelism switched off (one new token per step
        cannot be split across TP ranks; megatron's own helper flips the flags and they are restored after),
        the CPU adapter's function mode suspended, and the chunks' input tensors cleared afterwards."""
        from megatron.core.inference.utils import InferenceMode
        from megatron.core.transformer.utils import set_model_to_sequence_parallel

        from megatron_qwen.platform import cpu_adapter

        was_training = [c.training for c in self.chunks]
        sequence_parallel = [c.config.sequence_parallel for c in self.chunks]
        try:
            for c, sp in zip(self.chunks, sequence_parallel):
                c.eval()
                if sp:
                    set_model_to_sequence_parallel(c, False)
            # On CPU the adapter's device-mapping mode is suspended: nothing in this loop asks for a "cuda"
            # device, and the mode's per-op round trip into Python cost ~40% of the time (docs/generation.md).
            with InferenceMode.active(), cpu_adapter.suspended():
                yield
        finally:
            for c, training, sp in zip(self.chunks, was_training, sequence_parallel):
                c.train(training)
                if sp:
                    set_model_to_sequence_parallel(c, True)
                if not c.pre_process:
                    c.set_input_tensor(None)

    def _left_padding_supported(self) -> bool:
        """Left padding needs an attention that honours an explicit padding mask in prefill and decode, and
        RoPE applied from a per-row table: our local core attention does; Transformer Engine's (GPU) takes
        the mask type from the layer spec, so there the batch is right-padded instead."""
        from megatron_qwen.model.attention import LocalCoreAttention

        layers = [layer for c in self.chunks for layer in c.decoder.layers]
        return all(isinstance(layer.self_attention.core_attention, LocalCoreAttention) for layer in layers) and \
            not getattr(self.config, "apply_rope_fusion", False)

    @contextlib.contextmanager
    def _row_positions(self, positions: torch.Tensor):
        """RoPE from position `positions[row, index]` instead of `index`: megatron computes one table for
        the whole batch (indexed by sequence index); for the call, each chunk's table becomes [s, b, 1, d]."""
        patched = []
        for chunk in self.chunks:
            module = getattr(chunk, "rotary_pos_emb", None)
            if module is None:
                continue
            original = module.forward

            def per_row(*args, _original=original, **kwargs):
                out = _original(*args, **kwargs)
                table, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
                table = table[positions.t()].squeeze(2)  # [s, 1, 1, d] -> [s, b, 1, d]
                return (table, *rest) if rest is not None else table

            module.forward = per_row
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward  # back to the class's method

    # -- collectives -------------------------------------------------------------------------------------

    def _shared_seed(self) -> int:
        """A fresh random seed, the same on every rank of the model-parallel group."""
        seed = torch.tensor([int.from_bytes(os.urandom(7), "little")], dtype=torch.long, device=self.device)
        if dist.is_initialized() and self.tp * self.pp > 1:
            group = parallel_state.get_model_parallel_group()
            dist.broadcast(seed, src=dist.get_process_group_ranks(group)[0], group=group)
        return int(seed)

    def _broadcast_from_last_stage(self, ids: torch.Tensor | None, batch: int) -> torch.Tensor:
        if self.pp == 1:
            return ids
        if ids is None:
            ids = torch.empty(batch, dtype=torch.long, device=self.device)
        dist.broadcast(ids, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
        return ids

    # -- one forward over the pipeline ---------------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, start: int, context, last_only: bool = True,
                 mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Run positions [start, start + s) of `tokens` [b, s]; the last stage returns the logits over the full
        vocabulary ([b, V] of the last position, or [b, s, V] with last_only=False), the other stages None."""
        b, s = tokens.shape
        positions = torch.arange(start, start + s, device=self.device)[None].expand(b, s)
        dtype = self.config.pipeline_dtype or self.config.params_dtype
        logits = None
        for chunk in self.chunks:
            if not chunk.pre_process:
                buf = torch.empty(s, b, self.config.hidden_size, dtype=dtype, device=self.device)
                dist.recv(buf, src=parallel_state.get_pipeline_model_parallel_prev_rank())
                chunk.set_input_tensor(buf)
            out = chunk(tokens, positions, mask, inference_context=context, runtime_gather_output=True)
            if chunk.post_process:
                logits = out[:, -1, :].float() if last_only else out  # vocabulary gathered over TP
            else:
                dist.send(out.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
        context.increment_sequence_len_offset(s)
        return logits

    # -- the loop ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                     decode: Callable[[list[int]], str] | None = None,
                     progress: Callable[[int], None] | None = None) -> list[Generation]:
        """Collective: continue every prompt. `decode(ids) -> str` gives `Generation.text` and finds stop
        strings; `progress(n)` is called after each step with the number of positions processed."""
        from megatron.core.inference.contexts.static_context import StaticInferenceContext

        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if params.stop and decode is None:
            raise ValueError("stop strings need a decode function")
        lengths = [len(p) for p in prompts]
        batch, shortest, longest = len(prompts), min(lengths), max(lengths)
        total = longest + params.max_tokens
        if total > self.max_sequence_length:
            raise ValueError(f"prompt ({longest} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds the "
                             f"model's maximum sequence length {self.max_sequence_length}")
        tokens = torch.zeros(batch, total, dtype=torch.long, device=self.device)
        left = self.left_padding and shortest != longest and self._left_padding_supported()
        pads = [longest - n if left else 0 for n in lengths]
        for i, p in enumerate(prompts):
            tokens[i, pads[i] : pads[i] + len(p)] = torch.as_tensor(list(p), dtype=torch.long)
        if left:  # every row's prompt ends at `longest`: one prefill, then every step generates for all rows
            lengths, shortest = [longest] * batch, longest
            index = torch.arange(total, device=self.device)
            pad = torch.tensor(pads, device=self.device)[:, None]
            row_positions = (index[None] - pad).clamp(min=0)  # [b, total]
            real_key = index[None] >= pad  # [b, total]
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed if params.seed is not None else self._shared_seed())

        out: list[list[int]] = [[] for _ in range(batch)]
        results: list[Generation | None] = [None] * batch
        context = StaticInferenceContext(batch, total)
        context.config.materialize_only_last_token_logits = True
        last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        positions = self._row_positions(row_positions) if left else contextlib.nullcontext()
        with self._inference(), positions:
            start, end = 0, shortest
            while True:
                mask = None
                if left:  # megatron's convention: True = masked. Pad queries see themselves (no empty row).
                    keys = real_key[:, None, None, :end]
                    if start == 0:
                        causal = torch.ones(end, end, dtype=torch.bool, device=self.device).tril()
                        allowed = (causal & keys) | torch.eye(end, dtype=torch.bool, device=self.device)
                    else:
                        allowed = keys
                    mask = ~allowed
                logits = self._forward(tokens[:, start:end], start, context, mask=mask)
                ids = None
                if last_stage:
                    if self.vocab_size is not None:
                        logits = logits[:, : self.vocab_size]
                    ids = _select(logits, params, generator)
                ids = self._broadcast_from_last_stage(ids, batch).tolist()
                for i in range(batch):
                    if results[i] is not None or lengths[i] > end:
                        continue  # finished, or still reading its prompt
                    tokens[i, end] = ids[i]
                    results[i] = self._check(out[i], ids[i], params, decode)
                if progress is not None:
                    progress(end - start)
                if all(r is not None for r in results) or end + 1 >= total:
                    break
                if end >= longest:
                    context.enable_decode_mode()
                start, end = end, end + 1
        done = [r if r is not None else Generation(o, None, "length") for r, o in zip(results, out)]
        for r in done:
            if r.text is None and decode is not None:
                r.text = decode(r.tokens)
        return done

    @torch.no_grad()
    def sequence_nll(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, int]]:
        """Collective: (sum of -log p(token | the tokens before it), number of predicted tokens) for each
        sequence, from one forward over the right-padded batch (every rank gets the numbers)."""
        from megatron.core.inference.contexts.static_context import StaticInferenceContext

        if any(len(s) < 2 for s in sequences):
            raise ValueError("every sequence needs at least two tokens")
        lengths = torch.tensor([len(s) for s in sequences], device=self.device)
        batch, longest = len(sequences), int(lengths.max())
        tokens = torch.zeros(batch, longest, dtype=torch.long, device=self.device)
        for i, seq in enumerate(sequences):
            tokens[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        context = StaticInferenceContext(batch, longest)
        context.config.materialize_only_last_token_logits = False
        sums = torch.zeros(batch, dtype=torch.float64, device=self.device)
        with self._inference():
            logits = self._forward(tokens, 0, context, last_only=False)
        if logits is not None:
            if self.vocab_size is not None:
                logits = logits[..., : self.vocab_size]
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
            valid = torch.arange(longest - 1, device=self.device)[None] < (lengths[:, None] - 1)
            sums = (nll * valid).sum(dim=1).double()
        if self.pp > 1:
            dist.broadcast(sums, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                           group=parallel_state.get_pipeline_model_parallel_group())
        return [(float(x), int(n) - 1) for x, n in zip(sums.tolist(), lengths.tolist())]

    @staticmethod
    def _check(out: list[int], token: int, params: SamplingParams, decode) -> Generation | None:
        """Append `token` to `out`; a Generation when that ends the row, else None."""
        if token in params.stop_ids:
            return Generation(out, None, "stop", stop_id=token)
        out.append(token)
        if params.stop:  # decoded in full each step: a stop string may span tokens, and ids may split characters
            text = decode(out)
            cut = _earliest(text, params.stop)
            if cut >= 0:
                return Generation(out, text[:cut], "stop")
        if len(out) >= params.max_tokens:
            return Generation(out, None, "length")
        return None
