"""Which GPU fusions and overlaps a run gets: the `perf` section resolved against this machine and layout.

Every switch in `PerfConfig` is a request. `resolve()` grants it only where it runs and computes the same
function (CUDA, the kernels it needs, a layout it supports) and records why it refused the others, so
`build_transformer_config()` and the DDP wrapper (training/step.py) read one decision. On a CPU nothing
is granted and the model is built exactly as it always was. The rules, with megatron-core's reasons:

- RoPE fusion needs Transformer Engine's kernels; with YaRN megatron-core's fused bshd path falls back
  (mscale != 1) and its fused packed (thd) path ignores mscale, so YaRN turns it off.
- Gradient-accumulation fusion needs apex's `fused_weight_gradient_mlp_cuda`: megatron's own linears (the
  output layer in every spec, every linear in the local spec) refuse to build without it.
- TP communication overlap (TE userbuffers) needs the TE spec, TP > 1 and sequence parallelism.
- Parameter-gather overlap needs the distributed optimizer and gradient-reduce overlap.
- PP p2p overlap needs the interleaved schedule (virtual pipeline stages); it replaces batched p2p.
- CUDA graphs need the TE spec and static shapes (no packed sequences, no full recomputation).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch

from megatron_qwen.config import ModelConfig, ParallelConfig, PerfConfig
from megatron_qwen.model import specs
from megatron_qwen.platform import on_gpu


@dataclass(frozen=True)
class Switches:
    """The switches this run gets, with the reason each refused request was refused."""

    bias_activation_fusion: bool = False
    bias_dropout_fusion: bool = False
    masked_softmax_fusion: bool = False
    apply_rope_fusion: bool = False
    gradient_accumulation_fusion: bool = False
    cross_entropy_fusion: bool = False
    attention_backend: str = "auto"
    tp_comm_overlap: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    overlap_p2p_comm: bool = False
    # Batched p2p posts send_prev before send_next; with PP=2 both go to the same peer, and gloo matches
    # same-tag messages in posting order, so an activation and a gradient can swap. The unbatched path (the
    # CPU's) orders sends and receives by rank parity. On a GPU p2p is batched unless overlapped.
    batch_p2p_comm: bool = False
    cuda_graph: str = "none"
    refused: dict[str, str] = field(default_factory=dict)  # perf key -> why it is off

    def transformer_config_kwargs(self) -> dict:
        """The TransformerConfig fields these switches set."""
        from megatron.core.transformer.enums import AttnBackend

        kwargs = dict(
            bias_activation_fusion=self.bias_activation_fusion,
            bias_dropout_fusion=self.bias_dropout_fusion,
            masked_softmax_fusion=self.masked_softmax_fusion,
            apply_rope_fusion=self.apply_rope_fusion,
            gradient_accumulation_fusion=self.gradient_accumulation_fusion,
            cross_entropy_loss_fusion=self.cross_entropy_fusion,
            cross_entropy_fusion_impl="native",
            attention_backend=AttnBackend[self.attention_backend],
            tp_comm_overlap=self.tp_comm_overlap,
            overlap_p2p_comm=self.overlap_p2p_comm,
            batch_p2p_comm=self.batch_p2p_comm,
        )
        if self.cuda_graph != "none":
            kwargs.update(cuda_graph_impl=self.cuda_graph, use_te_rng_tracker=True)
        return kwargs


def apex_wgrad_available() -> bool:
    """apex's fused weight-gradient kernel, which megatron's own linears need for gradient-accumulation fusion."""
    return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None


def resolve(perf: PerfConfig, model: ModelConfig, parallel: ParallelConfig, packed_sequences: bool = False) -> Switches:
    """The granted switches for this machine (see the module doc for the rules)."""
    if not on_gpu():
        return Switches(refused={"*": "not on a GPU: the CPU path runs unfused and without overlap"})
    p = parallel
    te_spec = specs.choose_impl(model) == "transformer_engine"
    refused: dict[str, str] = {}

    def grant(key: str, *conditions: tuple[bool, str]) -> bool:
        """perf.<key> if requested and every condition holds; else off, with the first reason recorded."""
        reasons = ["off in perf"] if not getattr(perf, key) else [why for ok, why in conditions if not ok]
        if reasons:
            refused[key] = reasons[0]
        return not reasons

    te_spec_needed = (te_spec, "needs the Transformer Engine spec (transformer-engine and CUDA)")
    grad_reduce = grant("overlap_grad_reduce")
    p2p = grant("overlap_p2p_comm", (p.virtual_pipeline_model_parallel_size is not None,
                                     "needs the interleaved schedule (parallel.virtual_pipeline_model_parallel_size)"))
    cuda_graph = perf.cuda_graph
    if cuda_graph != "none" and not grant(
            "cuda_graph", te_spec_needed,
            (not packed_sequences, "needs static shapes, not data.packed_sequences"),
            (model.recompute_granularity != "full", "not with model.recompute_granularity=full")):
        cuda_graph = "none"
    return Switches(
        bias_activation_fusion=grant("bias_activation_fusion"),
        bias_dropout_fusion=grant("bias_dropout_fusion"),
        masked_softmax_fusion=grant("masked_softmax_fusion"),
        apply_rope_fusion=grant("apply_rope_fusion",
                                (specs.transformer_engine_available(), "needs transformer-engine's fused kernels"),
                                (not model.yarn.enabled, "YaRN's mscale is not applied by the fused kernels "
                                                         "(model.yarn.enabled)")),
        gradient_accumulation_fusion=grant("gradient_accumulation_fusion", (
            apex_wgrad_available(), "needs apex's fused_weight_gradient_mlp_cuda for megatron's own linears")),
        cross_entropy_fusion=grant("cross_entropy_fusion"),
        attention_backend=perf.attention_backend if te_spec else "auto",
        tp_comm_overlap=grant("tp_comm_overlap", te_spec_needed,
                              (p.tensor_model_parallel_size > 1, "needs parallel.tensor_model_parallel_size > 1"),
                              (p.sequence_parallel, "needs parallel.sequence_parallel")),
        overlap_grad_reduce=grad_reduce,
        overlap_param_gather=grant("overlap_param_gather",
                                   (p.use_distributed_optimizer, "needs parallel.use_distributed_optimizer"),
                                   (grad_reduce, "needs perf.overlap_grad_reduce")),
        overlap_p2p_comm=p2p,
        batch_p2p_comm=not p2p,
        cuda_graph=cuda_graph,
        refused=refused,
    )


_USERBUFFERS: list[tuple] = []  # (shape, tp size) TE's userbuffers were initialized with (once per process)


def initialize_userbuffers(model: ModelConfig, parallel: ParallelConfig, seq_length: int, micro_batch_size: int,
                           params_dtype: torch.dtype) -> None:
    """TE's userbuffers for TP communication overlap, once per process, before the model is built."""
    key = ([seq_length * micro_batch_size // parallel.context_parallel_size, model.hidden_size],
           parallel.tensor_model_parallel_size)
    if _USERBUFFERS:
        if _USERBUFFERS[0] != key:
            raise RuntimeError(f"TE userbuffers are initialized for {_USERBUFFERS[0]}, not {key}")
        return
    from transformer_engine.pytorch.module.base import initialize_ub

    initialize_ub(shape=key[0], tp_size=key[1], use_fp8=model.fp8_recipe is not None, dtype=params_dtype)
    _USERBUFFERS.append(key)
