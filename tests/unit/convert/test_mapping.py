"""The mapping table: QKV / gate-up layouts spelled out, exact round trips, shards read without fusing."""

import dataclasses

import pytest
import torch

from megatron_qwen.config import ModelConfig
from megatron_qwen.convert import mapping
from megatron_qwen.model.presets import PRESETS, count_parameters


def cfg(heads, groups, head_dim=4, hidden=16, ffn=24, vocab=40, tied=False, layers=2):
    return ModelConfig(num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
                       num_query_groups=groups, kv_channels=head_dim, vocab_size=vocab, tie_word_embeddings=tied)


def rule(name):
    return next(r for r in mapping.RULES if r.megatron.endswith(name))


def random_parts(r, m, hf_vocab=None, dtype=torch.float32):
    return [torch.randn(s).to(dtype) for s in mapping.hf_shapes(r, m, hf_vocab)]


def test_qkv_is_grouped_per_kv_head():
    m = cfg(heads=4, groups=2, head_dim=1)
    q = torch.tensor([10.0, 11, 12, 13])  # heads 0,1 in group 0; heads 2,3 in group 1
    k, v = torch.tensor([20.0, 21]), torch.tensor([30.0, 31])
    fused = mapping.fuse(rule("linear_qkv.bias"), m, [q, k, v])
    assert fused.tolist() == [10, 11, 20, 30, 12, 13, 21, 31]


def test_gate_up_is_gate_then_up():
    m = cfg(4, 2, ffn=2, hidden=1)
    fused = mapping.fuse(rule("linear_fc1.weight"), m, [torch.tensor([[1.0], [2]]), torch.tensor([[3.0], [4]])])
    assert fused.flatten().tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2), (14, 2), (7, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fuse_split_round_trip_is_exact(heads, groups, dtype):
    m = cfg(heads, groups)
    for r in mapping.rules_for(m):
        parts = random_parts(r, m, dtype=dtype)
        fused = mapping.fuse(r, m, parts)
        assert tuple(fused.shape) == mapping.megatron_shape(r, m), r.megatron
        back = mapping.split(r, m, fused)
        assert all(torch.equal(a, b) for a, b in zip(parts, back)), r.megatron


def test_vocab_padding_added_on_fuse_and_dropped_on_split():
    m = cfg(4, 2, vocab=48)
    r = rule("word_embeddings.weight")
    emb = torch.randn(45, 16)
    fused = mapping.fuse(r, m, [emb], hf_vocab=45)
    assert fused.shape == (48, 16) and torch.equal(fused[:45], emb) and not fused[45:].any()
    (back,) = mapping.split(r, m, fused, hf_vocab=45)
    assert torch.equal(back, emb)


@pytest.mark.parametrize("heads,groups", [(4, 2), (14, 2)])
def test_fill_rows_reads_any_row_window_without_the_whole_tensor(heads, groups):
    """A TP shard (any row range) comes out of the HF tensors exactly as the fused tensor's slice."""
    m = cfg(heads, groups)
    for r in mapping.rules_for(m):
        parts = random_parts(r, m)
        fused = mapping.fuse(r, m, parts)
        rows = fused.shape[0]
        for start, stop in [(0, rows), (0, rows // 2), (rows // 2, rows), (3, rows - 5), (7, 8)]:
            out = torch.empty((stop - start, *fused.shape[1:]))

            def read(source, a, b, dst, parts=parts):
                dst.copy_(parts[source][a:b])

            mapping.fill_rows(r, m, out, start, read)
            assert torch.equal(out, fused[start:stop]), (r.megatron, start, stop)


def test_state_dict_round_trip_with_both_spec_namings():
    m = cfg(4, 2, tied=False)
    hf = {}
    for r in mapping.rules_for(m):
        for layer in mapping.layers_of(r, m):
            for name, t in zip(r.hf, random_parts(r, m)):
                hf[mapping.name_for(name, layer)] = t
    te = mapping.hf_to_megatron(hf, m, spec="te")
    local = mapping.hf_to_megatron(hf, m, spec="local")
    assert "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight" in te
    assert "decoder.layers.1.input_layernorm.weight" in local
    assert "decoder.layers.0.pre_mlp_layernorm.weight" in local and "output_layer.weight" in local
    for state in (te, local):
        back = mapping.megatron_to_hf(state, m)
        assert back.keys() == hf.keys() and all(torch.equal(back[k], hf[k]) for k in hf)


def test_tied_models_have_no_head_rule():
    tied = cfg(4, 2, tied=True)
    assert "lm_head.weight" not in mapping.expected_hf_names(tied)
    assert "lm_head.weight" == mapping.expected_hf_names(dataclasses.replace(tied, tie_word_embeddings=False))[-1]


def test_checkpoint_keys_drop_the_layer_number():
    assert rule("linear_qkv.layer_norm_weight").checkpoint_key == "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
    assert rule("final_layernorm.weight").checkpoint_key == "decoder.final_layernorm.weight"


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith("qwen")])
def test_table_covers_every_parameter_of_each_preset(preset):
    """The HF names and shapes the table implies are transformers' own (meta device, no memory)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from megatron_qwen.convert.hf_config import hf_config_from_model, model_config_from_hf

    m = PRESETS[preset]
    config = Qwen2Config(**{k: v for k, v in hf_config_from_model(m).items() if k != "architectures"})
    with torch.device("meta"):
        hf = Qwen2ForCausalLM(config)
    params = dict(hf.named_parameters())
    names = mapping.expected_hf_names(m)
    assert set(names) == set(params)
    shapes = {}
    for r in mapping.rules_for(m):
        for layer in mapping.layers_of(r, m):
            for n, s in zip(r.hf, mapping.hf_shapes(r, m)):
                shapes[mapping.name_for(n, layer)] = s
    assert all(tuple(params[n].shape) == shapes[n] for n in names)
    assert sum(p.numel() for p in params.values()) == count_parameters(m)
    back = model_config_from_hf(hf_config_from_model(m), name=m.name)
    assert back == dataclasses.replace(m, init_method_std=back.init_method_std)
