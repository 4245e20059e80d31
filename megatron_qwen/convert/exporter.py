"""export-hf: a megatron_qwen distributed checkpoint -> an HF Qwen2 directory (safetensors + config.json).

The architecture comes from the checkpoint's metadata.json record (ckpt_io). No model is built: for the
embedding, each layer, the final norm and the head in turn, the whole (unsharded) tensors are read from
the checkpoint with dist-checkpointing — which stitches them together from whatever TP/PP layout wrote
them — split into HF tensors by the mapping table and written to the current safetensors shard. Memory
holds one layer (or the embedding) at a time. Vocabulary padding rows are dropped; everything is written
into `<out>.partial` and renamed at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from megatron_qwen.checkpointing.weights import read_record
from megatron_qwen.config import ModelConfig
from megatron_qwen.convert import mapping
from megatron_qwen.convert.hf_config import hf_config_from_model
from megatron_qwen.convert.hf_files import PlannedTensor, ShardedSafetensorsWriter

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "generation_config.json",
)
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "fp16": torch.float16, "float16": torch.float16}


def units(model: ModelConfig) -> list[tuple[int | None, list[mapping.Rule]]]:
    """What is read together, in HF file order: embedding, each layer, final norm, head."""
    rules = mapping.rules_for(model)
    per_layer = [r for r in rules if r.per_layer]
    out: list[tuple[int | None, list[mapping.Rule]]] = [(None, [rules[0]])]
    out += [(layer, per_layer) for layer in range(model.num_layers)]
    out += [(None, [r]) for r in rules[1:] if not r.per_layer]
    return out


def hf_plan(model: ModelConfig, hf_vocab: int, dtype: torch.dtype) -> list[PlannedTensor]:
    plan = []
    for layer, rules in units(model):
        for rule in rules:
            for name, shape in zip(rule.hf, mapping.hf_shapes(rule, model, hf_vocab)):
                plan.append(PlannedTensor(mapping.name_for(name, layer), dtype, shape))
    return plan


def _check_checkpoint_shapes(ckpt_dir, model: ModelConfig) -> torch.dtype:
    """Every tensor the mapping needs is in the checkpoint with the global shape the record implies."""
    from megatron.core import dist_checkpointing

    meta = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    dtypes = set()
    for rule in mapping.rules_for(model):
        key = rule.checkpoint_key
        want = mapping.megatron_shape(rule, model)
        if rule.per_layer:
            want = (model.num_layers, *want)
        if key not in meta:
            raise KeyError(f"{ckpt_dir}: checkpoint has no tensor {key} (needed for {', '.join(rule.hf)})")
        if tuple(meta[key].global_shape) != want:
            raise ValueError(f"{ckpt_dir}: {key} has global shape {list(meta[key].global_shape)}, "
                             f"metadata.json's architecture implies {list(want)}")
        dtypes.add(meta[key].dtype)
    if len(dtypes) != 1:
        raise ValueError(f"{ckpt_dir}: tensors have mixed dtypes {sorted(map(str, dtypes))}; pass --dtype")
    return dtypes.pop()


def read_unit(ckpt_dir, model: ModelConfig, layer: int | None, rules, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{checkpoint key: whole tensor of this layer} for `rules` (any layout the checkpoint was written at)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    request = {}
    for rule in rules:
        shape = mapping.megatron_shape(rule, model)
        if rule.per_layer:
            # One slice [layer] of the stacked [num_layers, ...] tensor, as an explicit leading axis.
            data = torch.empty((1, *shape), dtype=dtype)
            offsets = [(0, layer, model.num_layers)]
        else:
            data, offsets = torch.empty(shape, dtype=dtype), []
        request[rule.checkpoint_key] = ShardedTensor.from_rank_offsets(rule.checkpoint_key, data, *offsets, replica_id=0)
    loaded = dist_checkpointing.load(request, str(ckpt_dir), validate_access_integrity=False)
    return {r.checkpoint_key: loaded[r.checkpoint_key][0] if r.per_layer else loaded[r.checkpoint_key] for r in rules}


def export_in_process(ckpt_dir, out_dir, dtype: str | None = None, tokenizer: str | None = None,
                      max_shard_bytes: int = 5 * 10**9, show_progress: bool = True, adjust=None) -> dict:
    """Export from this process (torch.distributed must be initialized, world size 1). `adjust(layer, loaded)`,
    when given, may change each unit's whole Megatron tensors in place before they are split (LoRA merge)."""
    from tqdm import tqdm

    model, facts = read_record(ckpt_dir)
    hf_vocab = int(facts.get("hf_vocab_size", model.vocab_size))
    src_dtype = _check_checkpoint_shapes(ckpt_dir, model)
    out_dtype = DTYPES[dtype] if dtype else src_dtype
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already exists and is not empty; choose a new --out")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plan = hf_plan(model, hf_vocab, out_dtype)
    writer = ShardedSafetensorsWriter(tmp, plan, max_shard_bytes)
    bar = tqdm(total=writer.total_bytes, unit="B", unit_scale=True, desc="export", disable=not show_progress,
               mininterval=0.5)
    try:
        for layer, rules in units(model):
            loaded = read_unit(ckpt_dir, model, layer, rules, src_dtype)
            if adjust is not None:
                adjust(layer, loaded)
            for rule in rules:
                parts = mapping.split(rule, model, loaded.pop(rule.checkpoint_key), hf_vocab)
                for name, tensor in zip(rule.hf, parts):
                    writer.write(mapping.name_for(name, layer), tensor.to(out_dtype))
                    bar.update(tensor.numel() * out_dtype.itemsize)
                del parts
            bar.set_postfix_str(f"layer {layer}" if layer is not None else rules[0].megatron, refresh=False)
        index = writer.close()
    finally:
        bar.close()
    dtype_name = str(out_dtype).removeprefix("torch.")
    config = hf_config_from_model(model, hf_vocab, dtype_name, base=facts.get("hf_config"))
    import json

    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copied = []
    if tokenizer:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer) / name
            if src.is_file():
                shutil.copyfile(src, tmp / name)
                copied.append(name)
        if not copied:
            raise FileNotFoundError(f"{tokenizer}: none of the tokenizer files {TOKENIZER_FILES} found")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return {"files": sorted(set(index["weight_map"].values())), "bytes": writer.total_bytes,
            "dtype": dtype_name, "tokenizer_files": copied}


def _export_worker(*args, **kwargs):
    from megatron_qwen.config import ParallelConfig
    from megatron_qwen.platform import init_distributed

    init_distributed(ParallelConfig())
    return export_in_process(*args, **kwargs)


def export_hf(ckpt_dir, out_dir, dtype: str | None = None, tokenizer: str | None = None,
              max_shard_bytes: int = 5 * 10**9, show_progress: bool = True) -> dict:
    """Export in this process (a single-rank gloo group is started and torn down around it)."""
    from megatron_qwen.convert.importer import run_single_process

    read_record(ckpt_dir)  # fail early, before any process group
    return run_single_process(_export_worker, ckpt_dir, out_dir, dtype, tokenizer, max_shard_bytes, show_progress)
