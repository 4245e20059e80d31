"""HF `config.json` (Qwen2) <-> our `ModelConfig`, in both RoPE styles.

Published Qwen2.5(-Coder) checkpoints (transformers 4.x) write `rope_theta` plus `rope_scaling`
(`{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}` or null); transformers
5.x writes `rope_parameters` (`{"rope_type": ..., "rope_theta": ..., ...}`). We read either, refuse what
the architecture cannot express (sliding windows, other activations, other RoPE types), and write a file
with both spellings, which transformers 4.x and 5.x read to the same configuration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from megatron_qwen.config import ModelConfig, YarnConfig


class HFConfigError(ValueError):
    """A config.json this conversion cannot represent faithfully; the message names the file and field."""


def _rope_dict(cfg: dict) -> dict | None:
    """The RoPE scaling dict from either style (None: plain RoPE)."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not params:
        return None
    if set(params) and all(isinstance(v, dict) for v in params.values()):
        raise HFConfigError("per-layer-type rope_parameters are not supported (Qwen2 uses one RoPE for all layers)")
    kind = params.get("rope_type", params.get("type", "default"))
    return None if kind == "default" else dict(params, rope_type=kind)


def _rope_theta(cfg: dict) -> float:
    for source in (cfg.get("rope_parameters") or {}, cfg.get("rope_scaling") or {}, cfg):
        if isinstance(source, dict) and source.get("rope_theta") is not None:
            return float(source["rope_theta"])
    return 10000.0  # transformers' default when a config names none


def model_config_from_hf(cfg: dict, name: str = "hf", where: str = "config.json") -> ModelConfig:
    """ModelConfig from a Qwen2 config.json dict; `where` names the file in errors."""
    def need(key):
        if key not in cfg:
            raise HFConfigError(f"{where}: missing field {key!r}")
        return cfg[key]

    model_type = cfg.get("model_type", "qwen2")
    if model_type != "qwen2":
        raise HFConfigError(f"{where}: model_type {model_type!r} is not 'qwen2'")
    if cfg.get("hidden_act", "silu") != "silu":
        raise HFConfigError(f"{where}: hidden_act {cfg['hidden_act']!r} is not 'silu' (SwiGLU)")
    if cfg.get("use_sliding_window"):
        raise HFConfigError(f"{where}: use_sliding_window=true is not supported (set it to false)")
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    head_dim = cfg.get("head_dim") or hidden // heads
    yarn = YarnConfig()
    rope = _rope_dict(cfg)
    if rope is not None:
        if rope["rope_type"] != "yarn":
            raise HFConfigError(f"{where}: RoPE scaling type {rope['rope_type']!r} is not supported (only 'yarn')")
        factor = float(rope["factor"])
        mscale, mscale_all_dim = float(rope.get("mscale") or 1.0), float(rope.get("mscale_all_dim") or 0.0)
        yarn = YarnConfig(
            enabled=True,
            factor=factor,
            original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings") or need("max_position_embeddings")
            ),
            beta_fast=float(rope.get("beta_fast") or 32.0),
            beta_slow=float(rope.get("beta_slow") or 1.0),
            mscale=mscale,
            mscale_all_dim=mscale_all_dim,
            correction_range_round_to_int=bool(rope.get("truncate", True)),
        )
        if rope.get("attention_factor") is not None:
            implied = _attention_factor(yarn)
            if not math.isclose(float(rope["attention_factor"]), implied, rel_tol=1e-6):
                raise HFConfigError(
                    f"{where}: rope attention_factor {rope['attention_factor']} differs from the value "
                    f"factor/mscale imply ({implied}); megatron-core cannot express it"
                )
    return ModelConfig(
        name=name,
        num_layers=int(need("num_hidden_layers")),
        hidden_size=hidden,
        ffn_hidden_size=int(need("intermediate_size")),
        num_attention_heads=heads,
        num_query_groups=int(cfg.get("num_key_value_heads") or heads),
        kv_channels=int(head_dim),
        vocab_size=int(need("vocab_size")),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(cfg),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        yarn=yarn,
        init_method_std=float(cfg.get("initializer_range", 0.02)),
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
    )


def _attention_factor(y: YarnConfig) -> float:
    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if y.mscale and y.mscale_all_dim:
        return mscale(y.factor, y.mscale) / mscale(y.factor, y.mscale_all_dim)
    return mscale(y.factor)


# Fields of a source config.json that are recomputed rather than carried over on export.
_NOT_INHERITED = (
    "rope_scaling", "rope_parameters", "torch_dtype", "dtype", "layer_types", "transformers_version",
    "_name_or_path", "head_dim",
)


def hf_config_from_model(
    model: ModelConfig, hf_vocab: int | None = None, dtype: str = "bfloat16", base: dict | None = None
) -> dict[str, Any]:
    """A Qwen2 config.json dict readable by transformers 4.x and 5.x (`base` supplies token ids etc.)."""
    cfg: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "initializer_range": model.init_method_std,
        "max_window_layers": model.num_layers,
        "sliding_window": None,
        "use_cache": True,
    }
    if base:
        cfg.update({k: v for k, v in base.items() if k not in _NOT_INHERITED})
    cfg.update(
        hidden_act="silu",
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_query_groups,
        vocab_size=model.vocab_size if hf_vocab is None else hf_vocab,
        tie_word_embeddings=model.tie_word_embeddings,
        rms_norm_eps=model.rms_norm_eps,
        rope_theta=model.rope_theta,
        max_position_embeddings=model.max_position_embeddings,
        use_sliding_window=False,
        torch_dtype=dtype,  # transformers 4.x
        dtype=dtype,  # transformers 5.x
    )
    if model.kv_channels * model.num_attention_heads != model.hidden_size:
        cfg["head_dim"] = model.kv_channels
    else:
        cfg.pop("head_dim", None)
    y = model.yarn
    if y.enabled:
        scaling: dict[str, Any] = {
            "type": "yarn",  # transformers 4.x spelling
            "rope_type": "yarn",
            "factor": y.factor,
            "original_max_position_embeddings": y.original_max_position_embeddings,
            "beta_fast": y.beta_fast,
            "beta_slow": y.beta_slow,
        }
        if y.mscale_all_dim:
            scaling.update(mscale=y.mscale, mscale_all_dim=y.mscale_all_dim)
        if not y.correction_range_round_to_int:
            scaling["truncate"] = False
        cfg["rope_scaling"] = scaling
        cfg["rope_parameters"] = {k: v for k, v in scaling.items() if k != "type"} | {"rope_theta": model.rope_theta}
    else:
        cfg["rope_scaling"] = None
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": model.rope_theta}
    return cfg


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFConfigError(f"{path}: not found (an HF model directory needs config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFConfigError(f"{path}: not valid JSON ({e})") from e
