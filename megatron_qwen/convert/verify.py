"""verify: transformers' Qwen2ForCausalLM and our Megatron model, same weights, same tokens, same numbers?

The HF model runs first, in float32, and only its logits and per-token losses are kept; it is freed
before the Megatron side starts, so the two models are never in memory together. The Megatron side
builds the model at the requested TP/PP layout (float32), loads the checkpoint through
dist-checkpointing (resharding if it was written at another layout), runs megatron's forward-only
pipeline schedule twice — once for logits (gathered over the vocabulary-parallel TP shards), once with
labels for megatron's own per-token loss — and the maxima of the absolute differences are compared
with a stated tolerance.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from functools import partial

import torch

DEFAULT_TOLERANCE = 1e-4


@dataclass
class VerifyResult:
    logits_max_abs_diff: float
    loss_max_abs_diff: float
    tolerance: float
    logits_max_abs: float
    tokens: tuple[int, int]

    @property
    def ok(self) -> bool:
        return self.logits_max_abs_diff <= self.tolerance and self.loss_max_abs_diff <= self.tolerance

    def report(self) -> str:
        status = "OK" if self.ok else "FAILED"
        return (
            f"verify {status}: batch {self.tokens[0]} x {self.tokens[1]} tokens, float32\n"
            f"  max |logits_hf - logits_megatron|  = {self.logits_max_abs_diff:.3e}  (max |logits| {self.logits_max_abs:.3f})\n"
            f"  max |loss_hf - loss_megatron|      = {self.loss_max_abs_diff:.3e}  (per token)\n"
            f"  tolerance                          = {self.tolerance:.1e}"
        )


def token_batch(vocab: int, batch: int = 2, seq: int = 32, seed: int = 1234) -> torch.Tensor:
    """[batch, seq + 1] random token ids: inputs are [:, :-1], labels [:, 1:]."""
    return torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))


def hf_outputs(hf_dir, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [b, s, V], per-token loss [b, s]) from transformers in float32; the model is freed."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        logits = model(input_ids=inputs).logits.float()
    del model
    gc.collect()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return logits, loss.view(labels.shape)


def _forward_step(with_labels: bool, data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"],
                   labels=batch["labels"] if with_labels else None)
    return output, partial(_collect, with_labels)


def _collect(with_labels: bool, output: torch.Tensor):
    from megatron.core import parallel_state

    if not with_labels and parallel_state.get_tensor_model_parallel_world_size() > 1:
        group = parallel_state.get_tensor_model_parallel_group()
        parts = [torch.empty_like(output) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(parts, output.contiguous(), group=group)
        output = torch.cat(parts, dim=-1)
    return output.sum() * 0.0, {"output": output.detach().float().clone()}


def megatron_outputs_in_group(ckpt_dir, tokens: torch.Tensor, chunks=None):
    """Collective over an initialized job: (logits, per-token loss) on the rank that holds them, else None.

    `chunks` defaults to a float32 model of the checkpoint's architecture at the job's layout, loaded
    from `ckpt_dir`.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_qwen.checkpointing.weights import load_model_checkpoint, read_record
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.model.batch import causal_mask
    from megatron_qwen.model.build import build_model

    model, _ = read_record(ckpt_dir)
    seq = tokens.shape[1] - 1
    if chunks is None:
        parallel = ParallelConfig(
            tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
            pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
            virtual_pipeline_model_parallel_size=parallel_state.get_virtual_pipeline_model_parallel_world_size(),
        )
        chunks = build_model(model, parallel, seq, params_dtype=torch.float32)
        load_model_checkpoint(chunks, ckpt_dir)
    for chunk in chunks:
        chunk.eval()
    # One sequence per micro-batch: any batch size runs through the (interleaved) pipeline schedule.
    micro = [
        {
            "tokens": row[None, :-1].contiguous(),
            "labels": row[None, 1:].contiguous(),
            "position_ids": torch.arange(seq)[None],
            "attention_mask": causal_mask(seq),
        }
        for row in tokens
    ]
    results = []
    for with_labels in (False, True):
        iterators = [iter(micro) for _ in chunks]
        with torch.no_grad():
            store = get_forward_backward_func()(
                forward_step_func=partial(_forward_step, with_labels),
                data_iterator=iterators if len(chunks) > 1 else iterators[0],
                model=chunks if len(chunks) > 1 else chunks[0],
                num_microbatches=len(micro),
                seq_length=seq,
                micro_batch_size=1,
                forward_only=True,
            )
        results.append(torch.cat([m["output"] for m in store]) if store else None)
    holder = parallel_state.is_pipeline_last_stage(ignore_virtual=True) and parallel_state.get_tensor_model_parallel_rank() == 0
    return tuple(results) if holder else None


def _megatron_worker(ckpt_dir, tokens, tp, pp):
    tokens = torch.as_tensor(tokens)
    from megatron_qwen.checkpointing.weights import read_record
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.platform import init_distributed

    model, _ = read_record(ckpt_dir)
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    init_distributed(parallel, model, tokens.shape[1] - 1)
    result = megatron_outputs_in_group(ckpt_dir, tokens)
    # numpy arrays travel between processes by value; torch tensors go through shared-memory file
    # descriptors, which are gone when a worker exits before the parent has received them.
    return None if result is None else tuple(t.numpy() for t in result)


def compare(ref: tuple[torch.Tensor, torch.Tensor], got: tuple[torch.Tensor, torch.Tensor], hf_vocab: int,
            tolerance: float) -> VerifyResult:
    (ref_logits, ref_loss), (logits, loss) = ref, got
    logits = logits[..., :hf_vocab]  # Megatron's padding rows (if any) have no HF counterpart
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits shapes differ: transformers {list(ref_logits.shape)}, Megatron {list(logits.shape)}")
    return VerifyResult(
        logits_max_abs_diff=float((logits - ref_logits).abs().max()),
        loss_max_abs_diff=float((loss - ref_loss).abs().max()),
        tolerance=tolerance,
        logits_max_abs=float(ref_logits.abs().max()),
        tokens=tuple(ref_loss.shape),
    )


def verify(hf_dir, ckpt_dir, tp: int = 1, pp: int = 1, batch: int = 2, seq: int = 32, seed: int = 1234,
           tolerance: float = DEFAULT_TOLERANCE) -> VerifyResult:
    """Run both models on the same random token batch; see the module docstring."""
    from megatron_qwen.checkpointing.weights import read_record
    from megatron_qwen.convert.importer import run_single_process

    model, facts = read_record(ckpt_dir)
    hf_vocab = int(facts.get("hf_vocab_size", model.vocab_size))
    tokens = token_batch(hf_vocab, batch, seq, seed)
    ref = hf_outputs(hf_dir, tokens)
    if tp * pp == 1:
        got = run_single_process(_megatron_worker, str(ckpt_dir), tokens.numpy(), tp, pp)
    else:
        from megatron_qwen.platform.spawn import run_workers

        results = run_workers(tp * pp, _megatron_worker, str(ckpt_dir), tokens.numpy(), tp, pp)
        got = next(r for r in results if r is not None)
    return compare(ref, tuple(torch.from_numpy(a) for a in got), hf_vocab, tolerance)
