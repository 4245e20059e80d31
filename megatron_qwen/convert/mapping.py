"""The declarative weight mapping between HF `Qwen2ForCausalLM` and megatron-core's `GPTModel`.

`RULES` is the whole table. Each rule names one Megatron tensor (its TE-spec name, which is also its
dist-checkpoint key once the layer number is dropped; `local` gives the local-spec module name where it
differs) and the HF tensors it is made of, joined by one of four transforms:

- ``copy``: the same tensor;
- ``qkv``: Megatron's fused `linear_qkv` weight/bias, grouped per KV head:
  ``[q heads of group 0, k0, v0, q heads of group 1, k1, v1, ...]`` (rows);
- ``gate_up``: the fused `linear_fc1` of the gated MLP, ``[gate; up]`` (rows);
- ``vocab``: embedding / output rows, with Megatron's padding rows (zeros) after the HF vocabulary.

Every transform is a concatenation of HF row ranges along dim 0. `segments()` spells that out as a list
of runs, and everything else — fusing whole tensors, splitting them back, reading one tensor-parallel
shard straight from a safetensors file — is written once against that list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from megatron_qwen.config import ModelConfig

LAYER = "{layer}"


@dataclass(frozen=True)
class Rule:
    megatron: str  # TE-spec name; "{layer}" stands for the global layer number
    hf: tuple[str, ...]
    shapes: tuple[str, ...]  # one symbolic shape per HF tensor (see RULES)
    transform: str = "copy"  # "copy" | "qkv" | "gate_up" | "vocab"
    local: str | None = None  # local-spec module name, when it differs from the TE-spec name
    untied_only: bool = False  # exists only when input and output embeddings are not tied

    @property
    def per_layer(self) -> bool:
        return LAYER in self.megatron

    @property
    def checkpoint_key(self) -> str:
        """The dist-checkpoint key: per-layer tensors are stacked along a leading layer axis."""
        return self.megatron.replace("." + LAYER, "")


_L = "model.layers.{layer}."
# Shapes are written with symbols: V vocabulary (HF rows), H hidden, F ffn, Q heads*head_dim,
# K query_groups*head_dim.
RULES: tuple[Rule, ...] = (
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), ("VH",), "vocab"),
    Rule(
        "decoder.layers.{layer}.self_attention.linear_qkv.layer_norm_weight",
        (_L + "input_layernorm.weight",),
        ("H",),
        local="decoder.layers.{layer}.input_layernorm.weight",
    ),
    Rule(
        "decoder.layers.{layer}.self_attention.linear_qkv.weight",
        (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight", _L + "self_attn.v_proj.weight"),
        ("QH", "KH", "KH"),
        "qkv",
    ),
    Rule(
        "decoder.layers.{layer}.self_attention.linear_qkv.bias",
        (_L + "self_attn.q_proj.bias", _L + "self_attn.k_proj.bias", _L + "self_attn.v_proj.bias"),
        ("Q", "K", "K"),
        "qkv",
    ),
    Rule("decoder.layers.{layer}.self_attention.linear_proj.weight", (_L + "self_attn.o_proj.weight",), ("HQ",)),
    Rule(
        "decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight",
        (_L + "post_attention_layernorm.weight",),
        ("H",),
        local="decoder.layers.{layer}.pre_mlp_layernorm.weight",
    ),
    Rule(
        "decoder.layers.{layer}.mlp.linear_fc1.weight",
        (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"),
        ("FH", "FH"),
        "gate_up",
    ),
    Rule("decoder.layers.{layer}.mlp.linear_fc2.weight", (_L + "mlp.down_proj.weight",), ("HF",)),
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",), ("H",)),
    Rule("output_layer.weight", ("lm_head.weight",), ("VH",), "vocab", untied_only=True),
)

# HF tensors that carry no weights (old checkpoints saved RoPE's inverse frequencies).
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)
# In a tied checkpoint the head is the embedding; some writers store it anyway.
TIED_HEAD = "lm_head.weight"


def name_for(pattern: str, layer: int | None) -> str:
    return pattern if layer is None else pattern.replace(LAYER, str(layer))


def rules_for(model: ModelConfig) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if not (r.untied_only and model.tie_word_embeddings))


def rule_by_checkpoint_key(model: ModelConfig) -> dict[str, Rule]:
    return {r.checkpoint_key: r for r in rules_for(model)}


def layers_of(rule: Rule, model: ModelConfig) -> Iterator[int | None]:
    return iter(range(model.num_layers)) if rule.per_layer else iter([None])


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of HF tensor number `source` (None: padding rows of zeros)."""

    source: int | None
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def segments(rule: Rule, model: ModelConfig, hf_vocab: int | None = None) -> list[Segment]:
    """The fused Megatron tensor's rows, in order, as runs of HF rows."""
    if rule.transform == "qkv":
        d = model.kv_channels
        q_per_group = model.num_attention_heads // model.num_query_groups
        out = []
        for g in range(model.num_query_groups):
            out += [
                Segment(0, g * q_per_group * d, (g + 1) * q_per_group * d),
                Segment(1, g * d, (g + 1) * d),
                Segment(2, g * d, (g + 1) * d),
            ]
        return out
    if rule.transform == "gate_up":
        f = model.ffn_hidden_size
        return [Segment(0, 0, f), Segment(1, 0, f)]
    if rule.transform == "vocab":
        hf_vocab = model.vocab_size if hf_vocab is None else hf_vocab
        if hf_vocab > model.vocab_size:
            raise ValueError(
                f"HF vocabulary ({hf_vocab}) is larger than the Megatron embedding ({model.vocab_size} rows)"
            )
        pad = model.vocab_size - hf_vocab
        return [Segment(0, 0, hf_vocab)] + ([Segment(None, 0, pad)] if pad else [])
    if rule.transform == "copy":
        return [Segment(0, 0, hf_shapes(rule, model, hf_vocab)[0][0])]
    raise ValueError(f"unknown transform {rule.transform!r} in rule for {rule.megatron}")


def hf_shapes(rule: Rule, model: ModelConfig, hf_vocab: int | None = None) -> list[tuple[int, ...]]:
    """Shapes of the rule's HF tensors (for one layer)."""
    d = model.kv_channels
    size = {
        "V": model.vocab_size if hf_vocab is None else hf_vocab,
        "H": model.hidden_size,
        "F": model.ffn_hidden_size,
        "Q": model.num_attention_heads * d,
        "K": model.num_query_groups * d,
    }
    return [tuple(size[c] for c in shape) for shape in rule.shapes]


def megatron_shape(rule: Rule, model: ModelConfig) -> tuple[int, ...]:
    """Shape of the whole (unsharded, one layer) Megatron tensor."""
    rows = sum(s.rows for s in segments(rule, model, model.vocab_size))
    return (rows, *hf_shapes(rule, model)[0][1:])


def fuse(rule: Rule, model: ModelConfig, parts: list[torch.Tensor], hf_vocab: int | None = None) -> torch.Tensor:
    """HF tensors -> the whole Megatron tensor."""
    pieces = []
    for seg in segments(rule, model, hf_vocab):
        if seg.source is None:
            like = parts[0]
            pieces.append(torch.zeros((seg.rows, *like.shape[1:]), dtype=like.dtype))
        else:
            pieces.append(parts[seg.source][seg.start : seg.stop])
    return torch.cat(pieces, dim=0)


def split(rule: Rule, model: ModelConfig, fused: torch.Tensor, hf_vocab: int | None = None) -> list[torch.Tensor]:
    """The whole Megatron tensor -> its HF tensors (padding rows dropped).

    An HF tensor that is one run of rows is returned as a view of `fused` (no copy); the others are new.
    """
    shapes = hf_shapes(rule, model, hf_vocab)
    segs = segments(rule, model, hf_vocab)
    total = sum(s.rows for s in segs)
    if total != fused.shape[0]:
        raise ValueError(f"{rule.megatron}: expected {total} rows, the tensor has {fused.shape[0]}")
    runs: list[list[tuple[int, Segment]]] = [[] for _ in shapes]
    row = 0
    for seg in segs:
        if seg.source is not None:
            runs[seg.source].append((row, seg))
        row += seg.rows
    out = []
    for shape, parts in zip(shapes, runs):
        if len(parts) == 1 and parts[0][1].rows == shape[0]:
            row, seg = parts[0]
            out.append(fused[row : row + seg.rows])
            continue
        t = torch.empty(shape, dtype=fused.dtype)
        for row, seg in parts:
            t[seg.start : seg.stop] = fused[row : row + seg.rows]
        out.append(t)
    return out


def fill_rows(
    rule: Rule,
    model: ModelConfig,
    out: torch.Tensor,
    row_start: int,
    read: Callable[[int, int, int, torch.Tensor], None],
    hf_vocab: int | None = None,
) -> None:
    """Fill `out` with fused rows [row_start, row_start + len(out)) using `read(source, start, stop, dst)`.

    `read` copies rows [start, stop) of HF tensor `source` into `dst`; a tensor-parallel shard of a
    fused tensor is thus read without ever building the whole fused tensor.
    """
    row_stop = row_start + out.shape[0]
    pos = 0
    for seg in segments(rule, model, hf_vocab):
        lo, hi = max(pos, row_start), min(pos + seg.rows, row_stop)
        if lo < hi:
            dst = out[lo - row_start : hi - row_start]
            if seg.source is None:
                dst.zero_()
            else:
                read(seg.source, seg.start + lo - pos, seg.start + hi - pos, dst)
        pos += seg.rows


def hf_to_megatron(
    hf_state: dict[str, torch.Tensor], model: ModelConfig, spec: str = "te", hf_vocab: int | None = None
) -> dict[str, torch.Tensor]:
    """A whole HF state dict -> a TP=1, PP=1 GPTModel state dict (module names of `spec`)."""
    out = {}
    for rule in rules_for(model):
        for layer in layers_of(rule, model):
            parts = [hf_state[name_for(n, layer)] for n in rule.hf]
            pattern = rule.local if spec == "local" and rule.local else rule.megatron
            out[name_for(pattern, layer)] = fuse(rule, model, parts, hf_vocab)
    return out


def megatron_to_hf(
    state: dict[str, torch.Tensor], model: ModelConfig, hf_vocab: int | None = None
) -> dict[str, torch.Tensor]:
    """A TP=1, PP=1 GPTModel state dict (either spec's names) -> the HF state dict."""
    out = {}
    for rule in rules_for(model):
        for layer in layers_of(rule, model):
            te, local = name_for(rule.megatron, layer), name_for(rule.local or rule.megatron, layer)
            fused = state[te] if te in state else state[local]
            for name, tensor in zip(rule.hf, split(rule, model, fused, hf_vocab)):
                out[name_for(name, layer)] = tensor
    return out


def expected_hf_names(model: ModelConfig) -> list[str]:
    """Every HF tensor name of the architecture, in transformers' order (embeddings, layers, norm, head)."""
    rules = rules_for(model)
    names = list(rules[0].hf)  # the embedding
    for layer in range(model.num_layers):
        names += [name_for(n, layer) for r in rules if r.per_layer for n in r.hf]
    names += [n for r in rules[1:] if not r.per_layer for n in r.hf]
    return names
