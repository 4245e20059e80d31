"""Save and load model weights as a megatron-core distributed checkpoint, plus our architecture record.

The checkpoint is exactly `dist_checkpointing.save(model_state(chunks), dir)`: the model's
`sharded_state_dict()` under "model" (one chunk) or "model0", "model1", ... (virtual pipeline stages).
The top-level names do not reach the files — tensors are stored under their global sharded keys — so
a checkpoint written at one layout loads at any other through dist-checkpointing's resharding.

megatron-core writes `metadata.json` ({"sharded_backend": ...}) and reads only the fields it knows;
we add one more, "megatron_qwen", holding the ModelConfig and the HF facts export needs (vocabulary
size before padding, dtype, the source config.json), so `export-hf` knows the architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_qwen.config import ModelConfig, model_config_from_dict, model_config_to_dict
from megatron_qwen.platform.files import write_atomic

METADATA = "metadata.json"
SECTION = "megatron_qwen"
FORMAT = "megatron_qwen.model/1"


def model_state(chunks: list[torch.nn.Module], trainable_only: bool = False) -> dict:
    """The sharded state dict to save or load: {"model": ...} or {"model0": ..., "model1": ...}.

    `trainable_only`: without the frozen parameters (requires_grad False), e.g. a LoRA run's checkpoint holds
    its adapters only; when every parameter trains (full training) it is the whole state."""
    def state(chunk):
        sd = chunk.sharded_state_dict()
        if trainable_only:
            frozen = {id(p) for p in chunk.parameters() if not p.requires_grad}
            sd = {k: v for k, v in sd.items() if id(getattr(v, "data", None)) not in frozen}
        return sd

    if len(chunks) == 1:
        return {"model": state(chunks[0])}
    return {f"model{i}": state(chunk) for i, chunk in enumerate(chunks)}


def load_trainable(chunk: torch.nn.Module, state: dict) -> None:
    """`chunk.load_state_dict(state)`, where `state` may lack the frozen parameters (a LoRA checkpoint)."""
    result = chunk.load_state_dict(state, strict=False)
    frozen = {name for name, p in chunk.named_parameters() if not p.requires_grad}
    missing = [k for k in result.missing_keys if k not in frozen and not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise KeyError(f"state dict mismatch: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


def write_record(ckpt_dir: str | Path, model: ModelConfig, **facts) -> None:
    """Add our section to megatron's metadata.json (written atomically; rank 0 only)."""
    path = Path(ckpt_dir) / METADATA
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[SECTION] = {"format": FORMAT, "model": model_config_to_dict(model), **facts}
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_record(ckpt_dir: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the other facts) from a checkpoint's metadata.json."""
    path = Path(ckpt_dir) / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {ckpt_dir} is not a megatron-core distributed checkpoint")
    data = json.loads(path.read_text())
    if SECTION not in data:
        raise ValueError(
            f"{path}: no {SECTION!r} section; the checkpoint was not written by megatron_qwen "
            "(save_model_checkpoint or convert_checkpoint.py import-hf), so its architecture is unknown"
        )
    section = dict(data[SECTION])
    if section.get("format") != FORMAT:
        raise ValueError(f"{path}: {SECTION}.format is {section.get('format')!r}, expected {FORMAT!r}")
    return model_config_from_dict(section.pop("model")), section


def save_model_checkpoint(chunks: list[torch.nn.Module], ckpt_dir: str | Path, model: ModelConfig | None = None,
                          **facts) -> None:
    """Collective: every rank saves its shards; rank 0 records `model` (when given) in metadata.json."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    ckpt_dir = Path(ckpt_dir)
    if dist.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model_state(chunks), str(ckpt_dir))
    if model is not None and dist.get_rank() == 0:
        facts.setdefault("hf_vocab_size", model.vocab_size)
        facts.setdefault("dtype", str(next(chunks[0].parameters()).dtype).removeprefix("torch."))
        write_record(ckpt_dir, model, **facts)
    dist.barrier()


def load_model_checkpoint(chunks: list[torch.nn.Module], ckpt_dir: str | Path) -> None:
    """Collective: load the checkpoint into this rank's chunks (any layout; dtype cast to the model's).

    Every tensor the model has must be in the checkpoint. Module `_extra_state` entries the checkpoint
    lacks are tolerated: a checkpoint written with the local spec (CPU, import-hf) has none for
    Transformer Engine's core attention, whose extra state only carries FP8 scaling history.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    stored = [k for k in dist_checkpointing.load_tensors_metadata(str(ckpt_dir)) if not k.startswith("optimizer.")]
    if stored and all(".lora." in k for k in stored):
        raise KeyError(f"{ckpt_dir} holds LoRA adapters only (a LoRA run's checkpoint), not model weights: merge them "
                       "into their base first (`megatron-qwen convert export-lora --merged`, then `convert import-hf`)")
    state, _, not_in_ckpt = dist_checkpointing.load(
        model_state(chunks), str(ckpt_dir), strict=StrictHandling.RETURN_UNEXPECTED
    )
    absent = sorted(k for k in not_in_ckpt if not k.endswith("_extra_state"))
    if absent:
        raise KeyError(f"{ckpt_dir}: the checkpoint lacks {len(absent)} tensors this model needs, e.g. {absent[:3]} "
                       "(is it a checkpoint of another architecture, e.g. tied vs untied embeddings?)")
    for i, chunk in enumerate(chunks):
        result = chunk.load_state_dict(state["model" if len(chunks) == 1 else f"model{i}"], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise KeyError(f"{ckpt_dir}: state dict mismatch: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


def load_trainable_checkpoint(chunks: list[torch.nn.Module], ckpt_dir: str | Path) -> None:
    """Collective: the trainable tensors of a training checkpoint (a LoRA run's adapters) into `chunks`, whose
    frozen weights are already in place (any layout)."""
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(model_state(chunks, trainable_only=True), str(ckpt_dir))
    for i, chunk in enumerate(chunks):
        load_trainable(chunk, state["model" if len(chunks) == 1 else f"model{i}"])
