"""LoRA: low-rank adapters on megatron-core's tensor-parallel linears, exact under TP, SP and PP.

`apply_lora(chunks, lora, seed)` freezes every base weight (requires_grad False: megatron's DDP then gives it no
gradient buffer and the optimizer never sees it) and attaches an adapter to each targeted linear of each layer:

    y = W x (+ b)  +  (alpha / rank) · B A dropout(x)          A: [rank, in], B: [out, rank]

The adapter is a child module `lora` of the linear (state-dict keys `...linear_qkv.lora.A` / `.lora.B`), so the
base weights keep their names and checkpoints of the base model load unchanged. The linear's `forward` and
`sharded_state_dict` are wrapped on the instance; nothing in megatron-core is patched globally.

Tensor parallelism (per layer kind; `tp` ranks, `r` the rank of this process):
- column-parallel (linear_qkv, linear_fc1; output split): A is whole and replicated, B is split like the
  layer's output rows. z = A x is computed on every rank (identical), then passes a "copy to TP region"
  (identity forward, all-reduce backward), so each rank's partial dz = B_r^T dy_r is summed: dA and dx are
  complete and identical on every rank, with no extra gradient reduction. Under sequence parallelism the
  input is sequence-sharded: the adapter all-gathers it for A x, keeps only its shard for the backward and
  gathers again there (`_GatheredDown`), as the base layer does for its own product; dx is this rank's slice.
- row-parallel (linear_proj, linear_fc2; input split): A is split like the layer's input columns, B is whole
  and replicated. The partial z_r = A_r x_r are all-reduced (over `rank` values per token — smaller than the
  layer's output), then y = B z is complete on every rank and is added to the base layer's all-reduced output;
  under sequence parallelism the base output is reduce-scattered over the sequence, so the adapter keeps its
  own sequence slice of y (backward: all-gather of dy), and dB is complete on every rank.
- linear_fc1's rows are [gate; up], and each TP rank holds [gate_r; up_r]: B is split the same way, and its
  checkpoint entry uses megatron's swiglu factory, exactly like the weight it adapts.
Replicated adapter tensors get identical gradients on every TP rank by construction, so megatron's
finalize_model_grads has nothing to add. Pipeline parallelism needs nothing: adapters live in their layers.

Initialization as the reference implementation: A kaiming-uniform with a = sqrt(5) (uniform in ±1/sqrt(in)), B
zeros, so the adapted model starts as the base model. Each adapter's A is drawn whole from a generator seeded
by (seed, global layer, target) and then sliced, so every TP/PP layout starts from the same adapters.

Dropout uses torch's default generator on the adapter input, which megatron seeds identically on the ranks
of a TP group; so a replicated computation (column-parallel A x without SP) draws the same mask on every TP
rank and A stays replicated. Sharded inputs (row-parallel, and column-parallel under SP, where each rank
drops its own sequence shard before the gather) draw per shard: runs with lora.dropout > 0 are reproducible
per layout but not bit-equal across layouts.

`adapters_disabled(chunks)` turns every adapter off (the base model) for a block, e.g. DPO's reference pass.

Only megatron-core's own ColumnParallelLinear / RowParallelLinear (the local spec) are supported: the
Transformer Engine spec fuses the input norm into linear_qkv / linear_fc1, so the adapter would not see the
normed input; `apply_lora` refuses it with a message (see docs/lora.md).
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.layers import (
    set_defaults_if_not_set_tensor_model_parallel_attributes,
    set_tensor_model_parallel_attributes,
)
from megatron.core.tensor_parallel.mappings import (
    _gather_along_first_dim,
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.utils import make_tp_sharded_tensor_for_checkpoint

from megatron_qwen.config import LORA_TARGETS, LoRAConfig

# target -> (parent attribute of the TransformerLayer, kind)
TARGETS = {
    "linear_qkv": ("self_attention", "column"),
    "linear_proj": ("self_attention", "row"),
    "linear_fc1": ("mlp", "column"),
    "linear_fc2": ("mlp", "row"),
}
assert tuple(TARGETS) == LORA_TARGETS


class _GatheredDown(torch.autograd.Function):
    """z = all_gather_seq(x) · A^T for a column-parallel adapter under sequence parallelism, saving only this
    rank's sequence shard of x (the gather is redone in the backward, as megatron's own linears do): keeping
    the gathered input would cost h instead of h/TP activation elements per token and adapted layer.
    Backward: dz arrives complete (the copy-to-TP region after this op all-reduced it), so dA is complete on
    every rank and dx is this rank's slice of dz·A."""

    @staticmethod
    def forward(ctx, x, a, group):
        ctx.group = group
        ctx.save_for_backward(x, a)
        return torch.matmul(_gather_along_first_dim(x, group), a.t())

    @staticmethod
    def backward(ctx, dz):
        x, a = ctx.saved_tensors
        full = _gather_along_first_dim(x, ctx.group)
        da = dz.reshape(-1, dz.shape[-1]).t().matmul(full.reshape(-1, full.shape[-1]))
        n = x.shape[0]
        start = torch.distributed.get_rank(ctx.group) * n
        return dz[start:start + n].matmul(a), da, None


class LoRAAdapter(torch.nn.Module):
    """The low-rank update of one tensor-parallel linear (see the module doc for the communication)."""

    def __init__(self, kind: str, a: torch.Tensor, b: torch.Tensor, scale: float, dropout: float,
                 sequence_parallel: bool, gated: bool, tp_group):
        super().__init__()
        self.kind, self.scale, self.sequence_parallel, self.gated = kind, scale, sequence_parallel, gated
        self.tp_group = tp_group
        self.enabled = True
        self.A = torch.nn.Parameter(a)
        self.B = torch.nn.Parameter(b)
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        if kind == "column":
            set_defaults_if_not_set_tensor_model_parallel_attributes(self.A)
            set_tensor_model_parallel_attributes(self.B, True, 0, 1)
        else:
            set_tensor_model_parallel_attributes(self.A, True, 1, 1)
            set_defaults_if_not_set_tensor_model_parallel_attributes(self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's share of the layer output, laid out like the base layer's output."""
        g = self.tp_group
        if self.kind == "column":
            if self.sequence_parallel:
                z = _GatheredDown.apply(self.dropout(x), self.A, g)
            else:
                z = torch.matmul(self.dropout(x), self.A.t())
            z = copy_to_tensor_model_parallel_region(z, group=g)
            return torch.matmul(z, self.B.t()) * self.scale
        z = reduce_from_tensor_model_parallel_region(torch.matmul(self.dropout(x), self.A.t()), group=g)
        y = torch.matmul(z, self.B.t()) * self.scale
        if self.sequence_parallel:
            y = scatter_to_sequence_parallel_region(y, group=g)
        return y


def _forward(self, input_, *args, **kwargs):
    output, bias = type(self).forward(self, input_, *args, **kwargs)
    if self.lora.enabled:
        output = output + self.lora(input_).to(output.dtype)
    return output, bias


def _sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
    """The base layer's entries plus the adapter's, sharded over TP as the adapter is split."""
    from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

    metadata = ensure_metadata_has_dp_cp_group(metadata)
    state = type(self).sharded_state_dict(self, prefix, sharded_offsets, metadata)
    lora = self.lora
    groups = dict(tp_group=lora.tp_group, dp_cp_group=metadata["dp_cp_group"])
    split_name, axis = ("B", 0) if lora.kind == "column" else ("A", 1)
    key = f"{prefix}lora.{split_name}"
    sharded = make_tp_sharded_tensor_for_checkpoint(getattr(lora, split_name), key, axis,
                                                    prepend_offsets=sharded_offsets, **groups)
    if lora.gated:
        sharded = apply_swiglu_sharded_factory(sharded, sharded_offsets, tp_group=lora.tp_group,
                                               dp_group=metadata["dp_cp_group"])
    state[key] = sharded
    return state


def _generator(seed: int, layer: int, target: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + layer * 16 + LORA_TARGETS.index(target))


def init_a(rank: int, in_features: int, generator: torch.Generator) -> torch.Tensor:
    """A [rank, in_features] kaiming-uniform with a = sqrt(5), i.e. uniform in ±1/sqrt(in_features)."""
    a = torch.empty(rank, in_features)
    torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    return a


def _attach(linear, target: str, kind: str, layer: int, lora: LoRAConfig, seed: int, gated: bool) -> None:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    weight = linear.weight
    a = init_a(lora.rank, linear.input_size, _generator(seed, layer, target))
    if kind == "row":
        width = linear.input_size // tp
        a = a[:, tp_rank * width:(tp_rank + 1) * width]
    b = torch.zeros(weight.shape[0], lora.rank)
    adapter = LoRAAdapter(kind, a.to(weight.dtype).to(weight.device).contiguous(), b.to(weight.dtype).to(weight.device),
                          lora.alpha / lora.rank, lora.dropout, linear.sequence_parallel, gated,
                          parallel_state.get_tensor_model_parallel_group())
    linear.lora = adapter
    linear.forward = types.MethodType(_forward, linear)
    linear.sharded_state_dict = types.MethodType(_sharded_state_dict, linear)


def freeze(chunks: list[torch.nn.Module]) -> None:
    for chunk in chunks:
        for p in chunk.parameters():
            p.requires_grad_(False)


def apply_lora(chunks: list[torch.nn.Module], lora: LoRAConfig, seed: int) -> None:
    """Freeze the chunks' weights and attach trainable adapters to `lora.target_modules` of every layer."""
    freeze(chunks)
    for chunk in chunks:
        for layer in chunk.decoder.layers:
            number = layer.layer_number - 1  # global, 0-based
            for target in lora.target_modules:
                parent_name, kind = TARGETS[target]
                linear = getattr(getattr(layer, parent_name), target)
                expected = ColumnParallelLinear if kind == "column" else RowParallelLinear
                if type(linear) is not expected:
                    raise NotImplementedError(
                        f"LoRA needs megatron-core's {expected.__name__} for {target}; the model has "
                        f"{type(linear).__name__} (the Transformer Engine spec?): set model.transformer_impl=local")
                gated = target == "linear_fc1" and layer.config.gated_linear_unit
                _attach(linear, target, kind, number, lora, seed, gated)


def adapters(chunks: list[torch.nn.Module]) -> Iterator[tuple[str, LoRAAdapter]]:
    for chunk in chunks:
        for name, module in chunk.named_modules():
            if isinstance(module, LoRAAdapter):
                yield name, module


def has_adapters(chunks: list[torch.nn.Module]) -> bool:
    return next(adapters(chunks), None) is not None


@contextlib.contextmanager
def adapters_disabled(chunks: list[torch.nn.Module]) -> Iterator[None]:
    """Inside the block the chunks compute the base model (every adapter off); restored on exit."""
    touched = [m for _, m in adapters(chunks) if m.enabled]
    for m in touched:
        m.enabled = False
    try:
        yield
    finally:
        for m in touched:
            m.enabled = True


def trainable_parameter_count(model, lora: LoRAConfig) -> int:
    """Closed form of the adapter parameters of the whole model (all layers, unsharded):
    rank · (in + out) per targeted linear per layer."""
    q = model.num_attention_heads * model.kv_channels
    k = model.num_query_groups * model.kv_channels
    h, f = model.hidden_size, model.ffn_hidden_size
    shapes = {"linear_qkv": (h, q + 2 * k), "linear_proj": (q, h), "linear_fc1": (h, 2 * f), "linear_fc2": (f, h)}
    return model.num_layers * lora.rank * sum(sum(shapes[t]) for t in lora.target_modules)
