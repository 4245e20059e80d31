"""Per-GPU memory plan for a preset, a sequence length and a parallel layout (no GPU needed).

Used by `megatron-qwen plan` to choose TP/PP/CP for 32K and 128K on 80 GB GPUs. Four parts, per pipeline
stage (the plan reports the most loaded one):

- weights: the exact parameters this rank holds (layers/PP sharded by TP — norms replicated —, the
  embedding on the first stage, final norm and output layer on the last; a tied model's last stage
  holds a copy of the embedding when PP > 1), times the parameter bytes;
- gradients: megatron's DDP buffer, fp32 (`grad_reduce_in_fp32`), one per parameter;
- optimizer: Adam's two fp32 moments plus an fp32 master copy when the parameters are bf16, sharded
  over DP×CP with the distributed optimizer;
- activations: what the forward saves for backward, per layer and token (the selective-
  recomputation accounting of Megatron-LM, rewritten for GQA and SwiGLU), for the micro-batches a 1F1B first stage keeps in flight, plus the
  output layer's logits. Per token of one layer, in elements (s = tokens on this CP rank), for the
  Transformer Engine spec: fused norm+linear input and norm output 4h (÷TP with sequence parallelism),
  flash attention q/k/v (a+2g)d and its output (shared with the projection input) ad, SwiGLU input
  2f and the second linear's input f (÷TP). The local (CPU) spec saves more: unfused RMSNorm +2h,
  K/V repeated per query head (4ad instead of (a+2g)d + ad), unfused SwiGLU +2f, and a materialized
  float mask s_full·s per layer. Selective recomputation drops the mask (with flash attention it
  saves nothing else); full recomputation keeps one layer input per layer and adds one layer's
  activations while it is recomputed. Logits are fp32 (s·V/TP·4 bytes) on the last stage.

With LoRA (`Layout.lora_rank` > 0; model/lora.py) the base weights are frozen: they keep their bytes, but have no
gradient buffer and no optimizer state; the adapters (rank·(in + out) per targeted linear, split over TP as the
layer is: column-parallel A whole and B ÷TP, row-parallel A ÷TP and B whole) add weights, fp32 gradients and
Adam state. Activations: a frozen linear saves no input for a weight gradient, but its adapter saves the same
input for dA (under sequence parallelism only its shard, gathered again in the backward), so the accounting
above still holds, plus per adapted linear the rank-sized z (twice).

The CPU test checks weights, gradients and optimizer state against the real tensors, and activations
within 20% of the bytes saved for backward (saved-tensor hooks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from megatron_qwen.config import LORA_TARGETS, ModelConfig

GB = 1024**3


@dataclass
class Layout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    vpp: int | None = None
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    recompute: str | None = None  # None, "selective" or "full"
    micro_batch_size: int = 1
    num_microbatches: int = 8
    params_dtype: str = "bf16"  # "bf16" or "fp32"
    spec: str = "te"  # "te" (GPU: fused kernels, flash attention) or "local" (the CPU spec)
    lora_rank: int = 0  # > 0: LoRA on frozen weights (adapters of this rank on lora_targets); 0: full training
    lora_targets: tuple[str, ...] = LORA_TARGETS


@dataclass
class MemoryPlan:
    stage: int  # the pipeline stage reported (the most loaded)
    params: int  # parameters on this rank
    weights: int  # bytes
    gradients: int
    optimizer: int
    activations: int  # saved for backward at the peak of the schedule
    activations_no_recompute: int
    overhead: int
    total: int

    def as_gb(self) -> dict:
        return {k: (v / GB if k not in ("stage", "params") else v) for k, v in asdict(self).items()}


def _layer_params(m: ModelConfig, tp: int) -> int:
    d, h, f = m.kv_channels, m.hidden_size, m.ffn_hidden_size
    qkv_out = (m.num_attention_heads + 2 * m.num_query_groups) * d // tp
    return h * qkv_out + qkv_out + (m.num_attention_heads * d // tp) * h + 3 * h * f // tp + 2 * h


def lora_layer_params(m: ModelConfig, tp: int, rank: int, targets=LORA_TARGETS) -> int:
    """Adapter parameters of one layer on one TP rank (column-parallel: A whole, B ÷TP; row-parallel: A ÷TP)."""
    q, k = m.num_attention_heads * m.kv_channels, m.num_query_groups * m.kv_channels
    h, f = m.hidden_size, m.ffn_hidden_size
    per = {"linear_qkv": h + (q + 2 * k) // tp, "linear_proj": q // tp + h,
           "linear_fc1": h + 2 * f // tp, "linear_fc2": f // tp + h}
    return rank * sum(per[t] for t in targets)


def stage_layers(m: ModelConfig, layout: Layout) -> int:
    return m.num_layers // (layout.pp * (layout.vpp or 1)) * (layout.vpp or 1)


def stage_params(m: ModelConfig, layout: Layout, stage: int) -> int:
    """Exact parameter count on a rank of pipeline stage `stage` (all its virtual chunks)."""
    lay = layout
    chunks = lay.pp * (lay.vpp or 1)
    n = m.num_layers // chunks * (lay.vpp or 1) * _layer_params(m, lay.tp)
    embedding = m.vocab_size // lay.tp * m.hidden_size
    if stage == 0:
        n += embedding
    if stage == lay.pp - 1:
        n += m.hidden_size  # final norm
        if not m.tie_word_embeddings or lay.pp > 1:
            n += embedding
    return n


def activation_bytes_per_layer(m: ModelConfig, lay: Layout, seq_length: int, recompute: str | None) -> float:
    """Bytes one layer saves for backward for one micro-batch on one rank (see the module docstring)."""
    e = 2 if lay.params_dtype == "bf16" else 4
    s, b = seq_length / lay.cp, lay.micro_batch_size
    h, f, d = m.hidden_size, m.ffn_hidden_size, m.kv_channels
    a, g, t = m.num_attention_heads, m.num_query_groups, lay.tp
    sp = t if lay.sequence_parallel else 1
    if recompute == "full":
        return s * b * h / sp * e
    local = lay.spec == "local"
    norms = (6 if local else 4) * h / sp
    attention = (4 * a * d if local else (2 * a + 2 * g) * d) / t
    mlp = (5 if local else 3) * f / t
    mask = seq_length * s * 4 if local and recompute != "selective" else 0
    return s * b * (norms + attention + mlp) * e + mask


def lora_activation_bytes(m: ModelConfig, lay: Layout, seq_length: int, recompute: str | None) -> float:
    """What one layer's adapters save beyond activation_bytes_per_layer (see the module docstring)."""
    if not lay.lora_rank or recompute == "full":
        return 0.0
    e = 2 if lay.params_dtype == "bf16" else 4
    s, b = seq_length / lay.cp, lay.micro_batch_size
    return s * b * 2 * lay.lora_rank * len(lay.lora_targets) * e


def activation_bytes(m: ModelConfig, lay: Layout, seq_length: int, stage: int = 0,
                     recompute: str | None = None) -> int:
    """Bytes saved for backward on a rank of `stage` at the schedule's peak."""
    chunks = lay.pp * (lay.vpp or 1)
    layers = m.num_layers // chunks * (lay.vpp or 1)
    # 1F1B: stage i holds (pp - i) micro-batches in flight; interleaving adds (pp-1)/(pp·vpp) more.
    in_flight = min(lay.num_microbatches, lay.pp - stage)
    if lay.vpp:
        in_flight *= 1 + (lay.pp - 1) / (lay.pp * lay.vpp)
    per_layer = activation_bytes_per_layer(m, lay, seq_length, recompute) + lora_activation_bytes(m, lay, seq_length,
                                                                                                  recompute)
    total = layers * per_layer * in_flight
    if recompute == "full":  # one layer's activations while it is recomputed
        total += activation_bytes_per_layer(m, lay, seq_length, None)
    if stage == lay.pp - 1:  # logits (fp32 in the cross entropy) and the output layer's input
        s, b = seq_length / lay.cp, lay.micro_batch_size
        e = 2 if lay.params_dtype == "bf16" else 4
        sp = lay.tp if lay.sequence_parallel else 1
        norm = 3 if lay.spec == "local" else 2
        total += s * b * (m.vocab_size / lay.tp * 4 + norm * m.hidden_size / sp * e)
    return int(total)


def plan(m: ModelConfig, lay: Layout, seq_length: int, overhead_gb: float = 3.0) -> MemoryPlan:
    """The most loaded pipeline stage's per-GPU memory."""
    e = 2 if lay.params_dtype == "bf16" else 4
    best = None
    for stage in range(lay.pp):
        n = stage_params(m, lay, stage)
        trained = n
        if lay.lora_rank:  # frozen base: no gradients, no optimizer state; the adapters have both
            trained = stage_layers(m, lay) * lora_layer_params(m, lay.tp, lay.lora_rank, lay.lora_targets)
            n += trained
        shard = lay.dp * lay.cp if lay.distributed_optimizer else 1
        optimizer_per_param = 8 + (4 if e == 2 else 0)  # Adam moments (+ fp32 master weights)
        weights, grads = n * e, trained * 4
        opt = int(trained * optimizer_per_param / shard)
        acts = activation_bytes(m, lay, seq_length, stage, lay.recompute)
        acts0 = activation_bytes(m, lay, seq_length, stage, None)
        overhead = int(overhead_gb * GB)
        total = weights + grads + opt + acts + overhead
        candidate = MemoryPlan(stage, n, weights, grads, opt, acts, acts0, overhead, total)
        if best is None or candidate.total > best.total:
            best = candidate
    return best


def fits(p: MemoryPlan, capacity_gb: float = 80.0) -> bool:
    return p.total <= capacity_gb * GB


def search(m: ModelConfig, seq_length: int, gpus: int, base: Layout, capacity_gb: float = 80.0) -> list:
    """Every (tp, pp, cp) with tp·pp·cp dividing `gpus` that fits, smallest model-parallel size first."""
    import dataclasses

    found = []
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4, 8, 16):
            for cp in (1, 2, 4, 8, 16, 32):
                if gpus % (tp * pp * cp) or m.num_query_groups % tp or m.num_layers % pp:
                    continue
                if seq_length % (2 * cp) or (base.sequence_parallel and tp == 1):
                    continue
                lay = dataclasses.replace(base, tp=tp, pp=pp, cp=cp, dp=gpus // (tp * pp * cp), vpp=None)
                p = plan(m, lay, seq_length)
                if fits(p, capacity_gb):
                    found.append((tp * pp * cp, p.total, lay, p))
    found.sort(key=lambda x: (x[0], x[1]))
    return [(lay, p) for _, _, lay, p in found]
