"""HF Qwen2ForCausalLM <-> megatron-core GPTModel conversion that proves itself.

Modules:
  mapping    the declarative weight table (HF names, Megatron TE/local names, QKV and gate/up transforms)
  hf_config  config.json <-> ModelConfig (rope_theta + rope_scaling, or rope_parameters; YaRN)
  hf_files   streaming safetensors reader/writer (pickles only on request, weights_only)
  ckpt_io    save_model_checkpoint / load_model_checkpoint and the metadata.json record
  importer   import-hf: HF directory -> distributed checkpoint at a TP/PP/VPP layout
  exporter   export-hf: distributed checkpoint (any layout) -> HF directory
  verify     transformers vs Megatron logits and per-token loss on the same tokens

Checkpoint layout (what import-hf writes and the trainer loads):
  A megatron-core `dist_checkpointing` checkpoint (torch_dist backend) of
  `{"model": chunk.sharded_state_dict()}` — or `{"model0": ..., "model1": ...}` with virtual pipeline
  stages — i.e. exactly `dist_checkpointing.save(ckpt_io.model_state(chunks), dir)`. Load it with
  `ckpt_io.load_model_checkpoint(chunks, dir)` (= `dist_checkpointing.load(model_state(chunks), dir)`
  then `load_state_dict`). Tensors are stored under megatron's global sharded keys, e.g.
  `embedding.word_embeddings.weight` [vocab, hidden], `decoder.layers.self_attention.linear_qkv.weight`
  [layers, (heads + 2·groups)·head_dim, hidden] (per KV group: q heads, k, v),
  `decoder.layers.mlp.linear_fc1.weight` [layers, 2·ffn, hidden] ([gate; up]),
  `decoder.layers.self_attention.linear_qkv.layer_norm_weight` (the input RMSNorm, the same key for
  the TE and the local spec), `decoder.final_layernorm.weight`, `output_layer.weight` (untied only).
  Any TP/PP/VPP layout loads it; dist-checkpointing reshards.
  `metadata.json` is megatron's file ({"sharded_backend": "torch_dist", ...}) plus our "megatron_qwen"
  section: {"format", "model": ModelConfig as a dict, "hf_vocab_size", "dtype", "hf_config", ...}.
  Weights keep the HF dtype (bf16 for published checkpoints); loading casts to the model's dtype.
"""

from megatron_qwen.checkpointing.weights import (
    load_model_checkpoint,
    model_state,
    read_record,
    save_model_checkpoint,
)

__all__ = ["load_model_checkpoint", "model_state", "read_record", "save_model_checkpoint"]
