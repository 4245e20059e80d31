"""config.json <-> ModelConfig: both RoPE spellings in, one file out that transformers reads back."""

import json

import pytest

from megatron_qwen.config import YarnConfig
from megatron_qwen.convert.hf_config import HFConfigError, hf_config_from_model, model_config_from_hf
from megatron_qwen.model.presets import get_preset

# The shape of Qwen2.5-Coder-7B-Instruct's published config.json (transformers 4.x), YaRN block as the
# model card says to add it for 128K.
PUBLISHED_4X = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
}


def as_5x(cfg: dict) -> dict:
    out = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_theta", "torch_dtype")}
    rope = dict(cfg["rope_scaling"] or {"rope_type": "default"})
    rope["rope_type"] = rope.pop("type", rope.get("rope_type"))
    out["rope_parameters"] = rope | {"rope_theta": cfg["rope_theta"]}
    out["dtype"] = "bfloat16"
    return out


def test_both_rope_styles_read_the_same():
    a = model_config_from_hf(PUBLISHED_4X, name="qwen2.5-coder-7b")
    b = model_config_from_hf(as_5x(PUBLISHED_4X), name="qwen2.5-coder-7b")
    assert a == b
    assert a.yarn == YarnConfig(enabled=True, factor=4.0, original_max_position_embeddings=32768)
    assert a == get_preset("qwen2.5-coder-7b", yarn=a.yarn)


def test_plain_rope_reads_as_disabled_yarn():
    cfg = dict(PUBLISHED_4X, rope_scaling=None)
    assert not model_config_from_hf(cfg).yarn.enabled
    assert not model_config_from_hf(as_5x(cfg)).yarn.enabled
    assert model_config_from_hf(as_5x(cfg)).rope_theta == 1e6


@pytest.mark.parametrize("yarn", [False, True])
def test_written_config_reads_back_in_ours_and_transformers(tmp_path, yarn):
    from transformers import AutoConfig

    m = get_preset("qwen2.5-coder-0.5b")
    if yarn:
        m.yarn = YarnConfig(enabled=True, factor=4.0, original_max_position_embeddings=32768)
    cfg = hf_config_from_model(m, base={"bos_token_id": 151643, "eos_token_id": 151645})
    # transformers 4.x reads rope_theta + rope_scaling{"type": ...}; 5.x reads rope_parameters
    assert cfg["rope_theta"] == 1e6
    assert (cfg["rope_scaling"] or {}).get("type") == ("yarn" if yarn else None)
    assert cfg["rope_parameters"]["rope_theta"] == 1e6
    assert model_config_from_hf(cfg, name=m.name) == m
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = AutoConfig.from_pretrained(tmp_path)
    rope = loaded.rope_parameters
    assert rope["rope_theta"] == 1e6 and rope["rope_type"] == ("yarn" if yarn else "default")
    if yarn:
        assert rope["factor"] == 4.0 and rope["original_max_position_embeddings"] == 32768
    assert loaded.tie_word_embeddings is True and loaded.eos_token_id == 151645
    assert model_config_from_hf(loaded.to_dict(), name=m.name) == m


def test_head_dim_written_only_when_it_is_not_hidden_over_heads():
    m = get_preset("tiny", kv_channels=32)  # 4 heads x 32 != hidden 64
    assert hf_config_from_model(m)["head_dim"] == 32
    assert model_config_from_hf(hf_config_from_model(m), name="tiny") == m
    assert "head_dim" not in hf_config_from_model(get_preset("tiny"))


@pytest.mark.parametrize(
    "change,field",
    [
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
        ({"model_type": "llama"}, "model_type"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0, "attention_factor": 2.0}}, "attention_factor"),
    ],
)
def test_unsupported_configs_are_refused_by_field(change, field):
    with pytest.raises(HFConfigError, match=field):
        model_config_from_hf(dict(PUBLISHED_4X, **change), where="/x/config.json")


def test_missing_field_names_the_file():
    cfg = dict(PUBLISHED_4X)
    del cfg["intermediate_size"]
    with pytest.raises(HFConfigError, match=r"/x/config.json: missing field 'intermediate_size'"):
        model_config_from_hf(cfg, where="/x/config.json")
