"""export-lora: a LoRA run's adapter checkpoint -> a Hugging Face PEFT adapter, or a merged plain HF checkpoint.

The adapter checkpoint (written by an `sft_lora` / `dpo_lora` stage) holds the adapters only; its config.yaml
has the `lora` section (rank, alpha, dropout, targets) and its train_state names the base checkpoint it was
trained on (`--base` overrides it). Adapters are read whole, per layer, through dist-checkpointing, so any
TP/PP layout that wrote them exports the same files.

PEFT layout for Qwen2 (`base_model.model.model.layers.N.<module>.lora_{A,B}.weight`, scale lora_alpha / r):
- linear_qkv -> q_proj, k_proj, v_proj. Megatron's fused rows are grouped per KV head ([q heads of group 0,
  k0, v0, q heads of group 1, ...], convert/mapping.py); the fused adapter is B·A with one A, so q, k and v
  each get that same A and their own rows of B, taken with the same row segments the weight export uses.
- linear_fc1 -> gate_proj, up_proj: A shared, B rows [gate; up] split.
- linear_proj -> o_proj, linear_fc2 -> down_proj: as they are.
Splitting is exact: each HF projection's update B_rows·A equals its rows of the fused B·A.

The merged export is export-hf of the base checkpoint with W += (alpha / rank) · B A added to each adapted
weight, layer by layer, in float32 before the cast to the output dtype.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from megatron_qwen.checkpointing.weights import read_record
from megatron_qwen.config import LoRAConfig, ModelConfig
from megatron_qwen.convert import mapping
from megatron_qwen.convert.exporter import DTYPES, export_in_process

# megatron target -> (parent in the checkpoint key, the weight's mapping rule key)
_PARENT = {"linear_qkv": "self_attention", "linear_proj": "self_attention", "linear_fc1": "mlp", "linear_fc2": "mlp"}
PEFT_MODULES = {"linear_qkv": ("q_proj", "k_proj", "v_proj"), "linear_proj": ("o_proj",),
                "linear_fc1": ("gate_proj", "up_proj"), "linear_fc2": ("down_proj",)}
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def weight_rule(model: ModelConfig, target: str) -> mapping.Rule:
    return mapping.rule_by_checkpoint_key(model)[f"decoder.layers.{_PARENT[target]}.{target}.weight"]


def adapter_key(target: str, part: str) -> str:
    """The dist-checkpoint key of an adapter tensor (layers stacked on a leading axis)."""
    return f"decoder.layers.{_PARENT[target]}.{target}.lora.{part}"


def read_adapter_config(ckpt_dir) -> tuple[LoRAConfig, dict]:
    """(the run's lora section, the train_state record naming the base) of an adapter checkpoint."""
    from megatron.core import dist_checkpointing
    from omegaconf import OmegaConf

    from megatron_qwen.config import from_dictconfig

    ckpt_dir = Path(ckpt_dir)
    config = ckpt_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: not found; --ckpt must be an iteration dir of a LoRA training run")
    lora = from_dictconfig(OmegaConf.load(config)).lora
    if not lora.enabled:
        raise ValueError(f"{config}: lora.enabled is false; this is not an adapter checkpoint (use export-hf)")
    record = dist_checkpointing.load_common_state_dict(str(ckpt_dir))["train_state"].get("lora") or {}
    return lora, record


def split_rows(rule: mapping.Rule, model: ModelConfig, fused: torch.Tensor) -> list[torch.Tensor]:
    """Rows of a fused Megatron tensor (any width) -> one tensor per HF tensor of `rule`, by its row segments."""
    pieces: list[list[tuple[int, torch.Tensor]]] = [[] for _ in rule.hf]
    row = 0
    for seg in mapping.segments(rule, model):
        pieces[seg.source].append((seg.start, fused[row:row + seg.rows]))
        row += seg.rows
    if row != fused.shape[0]:
        raise ValueError(f"{rule.megatron}: expected {row} rows, the adapter has {fused.shape[0]}")
    return [torch.cat([t for _, t in sorted(p, key=lambda x: x[0])]) for p in pieces]


def read_adapters(ckpt_dir, model: ModelConfig, lora: LoRAConfig, layer: int) -> dict[str, tuple]:
    """{target: (A [rank, in], B [out, rank])} of one layer, whole."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    meta = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    request = {}
    for target in lora.target_modules:
        for part in ("A", "B"):
            key = adapter_key(target, part)
            if key not in meta:
                raise KeyError(f"{ckpt_dir}: no adapter tensor {key} (lora.target_modules names {target})")
            shape = tuple(meta[key].global_shape)
            if shape[0] != model.num_layers:
                raise ValueError(f"{ckpt_dir}: {key} has {shape[0]} layers, the model {model.num_layers}")
            data = torch.empty((1, *shape[1:]), dtype=meta[key].dtype)
            request[key] = ShardedTensor.from_rank_offsets(key, data, (0, layer, model.num_layers), replica_id=0)
    loaded = dist_checkpointing.load(request, str(ckpt_dir), validate_access_integrity=False)
    return {t: (loaded[adapter_key(t, "A")][0], loaded[adapter_key(t, "B")][0]) for t in lora.target_modules}


def peft_tensors(model: ModelConfig, lora: LoRAConfig, layer: int, found: dict) -> dict[str, torch.Tensor]:
    """One layer's adapters under PEFT's names."""
    out = {}
    for target, (a, b) in found.items():
        rule = weight_rule(model, target)
        b_parts = split_rows(rule, model, b) if len(rule.hf) > 1 else [b]
        for hf_name, b_part in zip(rule.hf, b_parts):
            stem = "base_model.model." + mapping.name_for(hf_name, layer).removesuffix(".weight")
            out[f"{stem}.lora_A.weight"] = a.clone()  # one copy per projection (safetensors shares no memory)
            out[f"{stem}.lora_B.weight"] = b_part.contiguous()
    return out


def adapter_config(lora: LoRAConfig, base_name: str) -> dict:
    """PEFT's adapter_config.json for these adapters (plain LoRA, no bias, scale alpha / r)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none",
        "target_modules": sorted(m for t in lora.target_modules for m in PEFT_MODULES[t]),
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }


def _fresh_dir(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already exists and is not empty; choose a new --out")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _base_of(record: dict, base) -> Path:
    path = Path(base or record.get("base") or "")
    if not base and not record.get("base"):
        raise ValueError("the adapter checkpoint names no base checkpoint; pass --base")
    if not (path / "metadata.json").is_file():
        raise FileNotFoundError(f"base checkpoint {path}: no metadata.json (pass --base CKPT: the checkpoint the "
                                "adapters were trained on)")
    return path


def export_peft_in_process(ckpt_dir, out_dir, base=None, dtype: str | None = None, base_name: str | None = None,
                           show_progress: bool = True) -> dict:
    """Write adapter_config.json + adapter_model.safetensors (torch.distributed initialized, world size 1)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    lora, record = read_adapter_config(ckpt_dir)
    base_path = _base_of(record, base)
    model, _ = read_record(base_path)
    out = Path(out_dir)
    tmp = _fresh_dir(out)
    tensors = {}
    for layer in tqdm(range(model.num_layers), desc="export-lora", disable=not show_progress):
        tensors.update(peft_tensors(model, lora, layer, read_adapters(ckpt_dir, model, lora, layer)))
    out_dtype = DTYPES[dtype] if dtype else next(iter(tensors.values())).dtype
    save_file({k: v.to(out_dtype) for k, v in tensors.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / CONFIG).write_text(json.dumps(adapter_config(lora, base_name or str(base_path)), indent=2) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return {"tensors": len(tensors), "dtype": str(out_dtype).removeprefix("torch."), "base": str(base_path)}


def export_merged_in_process(ckpt_dir, out_dir, base=None, dtype: str | None = None, tokenizer: str | None = None,
                             max_shard_bytes: int = 5 * 10**9, show_progress: bool = True) -> dict:
    """export-hf of the base with the adapters folded in (torch.distributed initialized, world size 1)."""
    lora, record = read_adapter_config(ckpt_dir)
    base_path = _base_of(record, base)
    model, _ = read_record(base_path)
    scale = lora.alpha / lora.rank

    def merge(layer, loaded):
        if layer is None:
            return
        for target, (a, b) in read_adapters(ckpt_dir, model, lora, layer).items():
            key = weight_rule(model, target).checkpoint_key
            w = loaded[key]
            loaded[key] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)

    summary = export_in_process(base_path, out_dir, dtype, tokenizer, max_shard_bytes, show_progress, adjust=merge)
    return dict(summary, base=str(base_path))


def _worker(fn, *args, **kwargs):
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.platform import init_distributed

    init_distributed(ParallelConfig())
    return fn(*args, **kwargs)


def export_lora(ckpt_dir, out_dir, merged: bool = False, base=None, dtype: str | None = None,
                tokenizer: str | None = None, base_name: str | None = None, max_shard_bytes: int = 5 * 10**9,
                show_progress: bool = True) -> dict:
    """The PEFT adapter (default) or the merged HF checkpoint, in this process (a one-rank gloo group)."""
    from megatron_qwen.convert.importer import run_single_process

    if merged:
        return run_single_process(_worker, export_merged_in_process, ckpt_dir, out_dir, base, dtype, tokenizer,
                                  max_shard_bytes, show_progress)
    return run_single_process(_worker, export_peft_in_process, ckpt_dir, out_dir, base, dtype, base_name,
                              show_progress)
