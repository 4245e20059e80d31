"""Single-process workers for the long-context unit tests (run under `run_workers(1, ...)` so the CPU
adapter and megatron's parallel state are set up exactly as in training)."""

from __future__ import annotations

import dataclasses

import torch

from megatron_qwen.config import ParallelConfig, YarnConfig
from megatron_qwen.model.presets import get_preset

ORIGINAL, FACTOR, LONG = 64, 4.0, 256


def _build(cfg, seq):
    from megatron_qwen.model.build import build_model
    from megatron_qwen.platform import init_distributed

    init_distributed(ParallelConfig(), cfg, seq, seed=7)
    (model,) = build_model(cfg, ParallelConfig(), seq)
    return model.eval()


def hf_state_from_megatron(model, cfg) -> dict[str, torch.Tensor]:
    """Our TP=1 local-spec GPTModel's weights under Hugging Face Qwen2 names (per-KV-group QKV split)."""
    sd = {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}
    d, groups = cfg.kv_channels, cfg.num_query_groups
    per = cfg.num_attention_heads // groups
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"]
    for i in range(cfg.num_layers):
        p, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = sd[p + f"self_attention.linear_qkv.{kind}"].reshape(groups, (per + 2) * d, -1)
            q, k, v = qkv.split([per * d, d, d], dim=1)
            shape = (-1, cfg.hidden_size) if kind == "weight" else (-1,)
            out[h + f"self_attn.q_proj.{kind}"] = q.reshape(shape)
            out[h + f"self_attn.k_proj.{kind}"] = k.reshape(shape)
            out[h + f"self_attn.v_proj.{kind}"] = v.reshape(shape)
        out[h + "self_attn.o_proj.weight"] = sd[p + "self_attention.linear_proj.weight"]
        gate, up = sd[p + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
        out[h + "mlp.down_proj.weight"] = sd[p + "mlp.linear_fc2.weight"]
        out[h + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[p + "pre_mlp_layernorm.weight"]
    return out


def yarn_logits_vs_hf(yarn_enabled: bool = True) -> dict:
    """Max |logit difference| between our model and transformers' Qwen2 on a 256-token sequence."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    yarn = YarnConfig(enabled=yarn_enabled, factor=FACTOR, original_max_position_embeddings=ORIGINAL)
    cfg = get_preset("tiny", yarn=yarn, max_position_embeddings=LONG, init_method_std=0.2)
    model = _build(cfg, LONG)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if yarn_enabled:
        rope = {"rope_type": "yarn", "rope_theta": cfg.rope_theta, "factor": FACTOR,
                "original_max_position_embeddings": ORIGINAL}
    hf_cfg = Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups, max_position_embeddings=LONG, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings, rope_parameters=rope,
    )
    hf_cfg._attn_implementation = "eager"
    hf = Qwen2ForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(hf_state_from_megatron(model, cfg), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    tokens = torch.randint(0, cfg.vocab_size, (1, LONG), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(LONG)[None]
    mask = torch.ones(1, 1, LONG, LONG, dtype=torch.bool).triu(1)
    with torch.no_grad():
        ours = model(tokens, positions, mask).float()  # [b, s, vocab]
        ref = hf(input_ids=tokens).logits.float()
    diff = (ours - ref).abs().amax(dim=-1)[0]
    return dict(
        max_diff=float(diff.max()), max_diff_beyond=float(diff[ORIGINAL:].max()),
        scale=float(ref.abs().max()), attention_factor=float(hf.model.rotary_emb.attention_scaling),
    )


def packed_vs_separate(doc_tokens: tuple[int, ...] = (7, 13, 20), yarn_enabled: bool = False) -> dict:
    """Per-document losses from one packed THD row, and from each document run alone."""
    from megatron_qwen.model.context_parallel import pack_documents, shard_batch_for_cp

    cfg = get_preset("tiny", init_method_std=0.2)
    if yarn_enabled:
        cfg = dataclasses.replace(cfg, yarn=YarnConfig(enabled=True, factor=4.0, original_max_position_embeddings=8))
    g = torch.Generator().manual_seed(11)
    docs = [torch.randint(0, cfg.vocab_size, (n + 1,), generator=g) for n in doc_tokens]
    packed = shard_batch_for_cp(pack_documents(docs), 0, 1)
    model = _build(cfg, packed["tokens"].shape[1])
    with torch.no_grad():
        loss = model(packed["tokens"], packed["position_ids"], None, labels=packed["labels"],
                     packed_seq_params=packed["packed_seq_params"])[0]
        cu = packed["cu_seqlens"].tolist()
        together = [loss[a : a + n].tolist() for a, n in zip(cu[:-1], doc_tokens)]
        alone = []
        for doc, n in zip(docs, doc_tokens):
            mask = torch.ones(1, 1, n, n, dtype=torch.bool).triu(1)
            alone.append(model(doc[None, :-1], torch.arange(n)[None], mask, labels=doc[None, 1:])[0].tolist())
    return dict(together=together, alone=alone)


def measure_memory(tp: int, seq: int, micro: int) -> dict:
    """Bytes of this rank's real parameters, main grads, Adam state and saved-for-backward activations."""
    from megatron.core import parallel_state

    from megatron_qwen.config import OptimConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.step import build_optimizer, train_step, wrap_model

    cfg = get_preset("tiny-untied")
    par = ParallelConfig(tensor_model_parallel_size=tp)
    init_distributed(par, cfg, seq, seed=7)
    chunks = build_model(cfg, par, seq)
    params = [p for c in chunks for p in c.parameters()]
    storages = {p.untyped_storage().data_ptr() for p in params}
    tokens = torch.randint(0, cfg.vocab_size, (micro, seq), generator=torch.Generator().manual_seed(5))
    batch = dict(tokens=tokens, labels=tokens.roll(-1, 1), loss_mask=torch.ones(micro, seq),
                 position_ids=torch.arange(seq).expand(micro, seq).contiguous(),
                 attention_mask=torch.ones(1, 1, seq, seq, dtype=torch.bool).triu(1))

    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in storages:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = chunks[0](batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    loss.sum().backward()
    activations = sum(saved.values())
    for p in params:
        p.grad = None

    wrapped = wrap_model(chunks, par)
    optimizer = build_optimizer(wrapped, OptimConfig(), par)
    train_step(wrapped, optimizer, [batch], seq, micro)
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    state = sum(t.numel() * t.element_size() for o in inner for s in o.optimizer.state.values()
                for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return dict(
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        params=sum(p.numel() for p in params),
        weights=sum(p.numel() * p.element_size() for p in params),
        gradients=sum(p.main_grad.numel() * p.main_grad.element_size() for p in params),
        optimizer=state,
        activations=activations,
    )


def train_tiny_checkpoint(text: str, ckpt_dir: str, steps: int = 5, seq: int = 64) -> list[float]:
    """Train the tiny preset a few steps on `text` as UTF-8 bytes and save it with its model record."""
    from megatron_qwen.checkpointing.weights import save_model_checkpoint
    from megatron_qwen.config import OptimConfig
    from megatron_qwen.model.build import build_model
    from megatron_qwen.platform import init_distributed
    from megatron_qwen.training.step import build_optimizer, train_step, wrap_model

    cfg = get_preset("tiny")
    par = ParallelConfig()
    init_distributed(par, cfg, seq, seed=7)
    chunks = build_model(cfg, par, seq)
    wrapped = wrap_model(chunks, par)
    optimizer = build_optimizer(wrapped, OptimConfig(lr=3e-3), par)
    data = torch.tensor(list(text.encode("utf-8")))
    mask = torch.ones(1, 1, seq, seq, dtype=torch.bool).triu(1)
    losses = []
    for step in range(steps):
        starts = [(step * 4 + j) * seq % (data.numel() - seq - 1) for j in range(4)]
        block = torch.stack([data[s : s + seq + 1] for s in starts])
        batch = dict(tokens=block[:, :-1], labels=block[:, 1:], loss_mask=torch.ones(4, seq),
                     position_ids=torch.arange(seq).expand(4, seq).contiguous(), attention_mask=mask)
        losses.append(train_step(wrapped, optimizer, [batch], seq, 4).loss)
    save_model_checkpoint(chunks, ckpt_dir, model=cfg)
    return losses


def needle_tool(argv: list[str]) -> int:
    from megatron_qwen.cli import needle

    return needle.main(argv)
