"""import-hf: an HF Qwen2 directory -> a megatron-core distributed checkpoint at a chosen TP/PP/VPP layout.

Each rank of the target layout builds its model chunks on the `meta` device (no memory, no random
init), asks megatron-core for their `sharded_state_dict()` — so keys, shard offsets and replica ids are
megatron's own — and saves it with torch.distributed.checkpoint. The one change is the save planner:
`resolve_data` builds each shard only when the writer asks for it, by reading the right rows of the HF
files through the mapping table, and the writer drops it once written. A rank therefore holds at most
one tensor shard at a time, never the model; progress is shown per written byte.

The files are what `dist_checkpointing.save(model_state(chunks), dir)` writes (see ckpt_io), written
into `<out>.partial` and renamed when every rank has finished.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from megatron_qwen.checkpointing.weights import model_state, write_record
from megatron_qwen.config import ModelConfig, ParallelConfig, validate_model_parallel
from megatron_qwen.convert import mapping
from megatron_qwen.convert.hf_config import HFConfigError, model_config_from_hf, read_hf_config
from megatron_qwen.convert.hf_files import WeightFileError, open_hf_weights


@dataclasses.dataclass
class SourceCheck:
    model: ModelConfig
    hf_vocab: int
    dtype: torch.dtype
    hf_config: dict


def check_source(hf_dir: str | Path, allow_pickle: bool = False, pad_vocab_to: int = 1) -> SourceCheck:
    """Read config.json and the weight headers; every tensor must be present, known and well shaped."""
    hf_config = read_hf_config(hf_dir)
    model = model_config_from_hf(hf_config, name=Path(hf_dir).name, where=str(Path(hf_dir) / "config.json"))
    hf_vocab = model.vocab_size
    padded = -(-hf_vocab // pad_vocab_to) * pad_vocab_to
    model = dataclasses.replace(model, vocab_size=padded)
    reader = open_hf_weights(hf_dir, allow_pickle)
    try:
        expected = {}
        for rule in mapping.rules_for(model):
            for layer in mapping.layers_of(rule, model):
                for name, shape in zip(rule.hf, mapping.hf_shapes(rule, model, hf_vocab)):
                    expected[mapping.name_for(name, layer)] = shape
        present = set(reader.names())
        missing = [n for n in expected if n not in present]
        if missing:
            raise WeightFileError(
                f"{hf_dir}: {len(missing)} tensors of the config.json architecture are missing, e.g. {missing[:3]}"
                + (" (tie_word_embeddings is false, so lm_head.weight is required)" if "lm_head.weight" in missing else "")
            )
        extra = [n for n in present - expected.keys() if not n.endswith(mapping.IGNORED_HF_SUFFIXES)]
        if model.tie_word_embeddings and mapping.TIED_HEAD in extra:
            extra.remove(mapping.TIED_HEAD)
            if not torch.equal(reader.read(mapping.TIED_HEAD), reader.read("model.embed_tokens.weight")):
                raise WeightFileError(
                    f"{reader.info(mapping.TIED_HEAD).file}: lm_head.weight differs from model.embed_tokens.weight "
                    "but config.json says tie_word_embeddings=true; fix the config (untied) or the weights"
                )
        if extra:
            raise WeightFileError(f"{hf_dir}: {len(extra)} tensors are not part of a Qwen2 model, e.g. {sorted(extra)[:3]}")
        dtypes = set()
        for name, shape in expected.items():
            info = reader.info(name)
            if tuple(info.shape) != tuple(shape):
                raise WeightFileError(f"{info.file}: tensor {name} has shape {list(info.shape)}, config.json implies {list(shape)}")
            dtypes.add(info.dtype)
    finally:
        reader.close()
    if len(dtypes) != 1:
        raise WeightFileError(f"{hf_dir}: tensors have mixed dtypes {sorted(map(str, dtypes))}; pass --dtype")
    return SourceCheck(model, hf_vocab, dtypes.pop(), hf_config)


class _ShardResolver:
    """Builds the checkpoint shard (key, global offsets, sizes) from the HF files."""

    def __init__(self, reader, model: ModelConfig, hf_vocab: int, progress=None):
        self.reader, self.model, self.hf_vocab, self.progress = reader, model, hf_vocab, progress
        self.rules = mapping.rule_by_checkpoint_key(model)

    def __call__(self, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if key not in self.rules:
            raise KeyError(f"checkpoint key {key} has no rule in megatron_qwen.convert.mapping.RULES")
        rule = self.rules[key]
        out = torch.empty(sizes, dtype=dtype)
        if rule.per_layer:
            layers, offsets, sizes = range(offsets[0], offsets[0] + sizes[0]), offsets[1:], sizes[1:]
            targets = [(layer, out[i]) for i, layer in enumerate(layers)]
        else:
            targets = [(None, out)]
        full = mapping.megatron_shape(rule, self.model)
        cols = None
        if len(sizes) == 2 and (offsets[1], sizes[1]) != (0, full[1]):
            cols = slice(offsets[1], offsets[1] + sizes[1])
        for layer, dst in targets:
            def read(source, start, stop, piece, layer=layer):
                name = mapping.name_for(rule.hf[source], layer)
                self.reader.read_rows(name, start, stop, piece, cols)

            mapping.fill_rows(rule, self.model, dst, offsets[0], read, self.hf_vocab)
        if self.progress is not None:
            self.progress.update(out.numel() * out.element_size())
            self.progress.set_postfix_str(key.removeprefix("decoder."), refresh=False)
        return out


def _streaming_planner(resolve):
    from megatron.core.dist_checkpointing.strategies.torch import MCoreSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    class StreamingSavePlanner(MCoreSavePlanner):
        """MCore's planner, except that tensor data is built on demand by `resolve`."""

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            chunk = write_item.tensor_data.chunk
            return resolve(write_item.index.fqn, tuple(chunk.offsets), tuple(chunk.sizes),
                           write_item.tensor_data.properties.dtype)

    return StreamingSavePlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


def write_shards(hf_dir, ckpt_dir, model: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype,
                 hf_vocab: int, allow_pickle: bool = False, show_progress: bool = True) -> int:
    """Collective over an initialized job with layout `parallel`: write this rank's shards; returns bytes."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
    from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess
    from megatron.core.dist_checkpointing.strategies.torch import (
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from tqdm import tqdm

    from megatron_qwen.model.build import build_model

    with torch.device("meta"):
        chunks = build_model(model, parallel, model.max_position_embeddings, params_dtype=dtype)
    # The same steps as dist_checkpointing.save(): factories, common state, main replicas only.
    sharded, common = save_preprocess(model_state(chunks), validate_access_integrity=True)
    sharded["common_state"] = ShardedObject("common_state", common, (1,), (0,), replica_id=dist.get_rank())
    flat, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded, keep_only_main_replica=True)
    total = sum(_numel(sh.local_shape) * dtype.itemsize for shards in flat.values() for sh in shards
                if isinstance(sh, ShardedTensor))
    pyt_state = mcore_to_pyt_state_dict(flat, is_loading=False)
    reader = open_hf_weights(hf_dir, allow_pickle)
    rank = dist.get_rank()
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"import rank {rank}",
               disable=not show_progress or rank != 0, mininterval=0.5)
    try:
        writer = dcp.FileSystemWriter(str(ckpt_dir), single_file_per_rank=True, sync_files=True, thread_count=1)
        dcp.save(pyt_state, storage_writer=writer, planner=_streaming_planner(_ShardResolver(reader, model, hf_vocab, bar)))
    finally:
        bar.close()
        reader.close()
    return total


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def import_in_group(hf_dir, out_dir, parallel: ParallelConfig, dtype: torch.dtype | None = None,
                    allow_pickle: bool = False, pad_vocab_to: int = 1, show_progress: bool = True) -> dict:
    """Collective: every rank of an initialized job with layout `parallel` calls this. Returns a summary."""
    import torch.distributed as dist
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

    src = check_source(hf_dir, allow_pickle, pad_vocab_to)
    model = src.model
    validate_model_parallel(model, parallel, seq_length=0)
    dtype = dtype or src.dtype
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    if dist.get_rank() == 0:
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out}: already exists and is not empty; choose a new --out")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    nbytes = write_shards(hf_dir, tmp, model, parallel, dtype, src.hf_vocab, allow_pickle, show_progress)
    dist.barrier()
    if dist.get_rank() == 0:
        save_config(CheckpointingConfig("torch_dist", 1), str(tmp))
        write_record(
            tmp, model,
            hf_vocab_size=src.hf_vocab,
            dtype=str(dtype).removeprefix("torch."),
            hf_config=src.hf_config,
            layout={"tp": parallel.tensor_model_parallel_size, "pp": parallel.pipeline_model_parallel_size,
                    "vpp": parallel.virtual_pipeline_model_parallel_size},
            source=str(Path(hf_dir).resolve()),
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    dist.barrier()
    return {"bytes": nbytes, "dtype": str(dtype), "vocab": model.vocab_size, "hf_vocab": src.hf_vocab}


def _import_worker(hf_dir, out_dir, parallel, dtype, allow_pickle, pad_vocab_to, show_progress):
    from megatron_qwen.platform import init_distributed

    init_distributed(parallel)
    return import_in_group(hf_dir, out_dir, parallel, dtype, allow_pickle, pad_vocab_to, show_progress)


def import_hf(hf_dir, out_dir, tp: int = 1, pp: int = 1, vpp: int | None = None, dtype: torch.dtype | None = None,
              allow_pickle: bool = False, pad_vocab_to: int = 1, show_progress: bool = True) -> dict:
    """Convert with tp·pp local processes (this process itself when that is 1)."""
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              virtual_pipeline_model_parallel_size=vpp)
    src = check_source(hf_dir, allow_pickle, pad_vocab_to)  # fail before starting any process
    try:
        validate_model_parallel(src.model, parallel, seq_length=0)
    except ValueError as e:
        raise HFConfigError(f"{Path(hf_dir) / 'config.json'}: {e}") from e
    world = tp * pp
    args = (str(hf_dir), str(out_dir), parallel, dtype, allow_pickle, pad_vocab_to, show_progress)
    if world == 1:
        return run_single_process(_import_worker, *args)
    from megatron_qwen.platform.spawn import run_workers

    return run_workers(world, _import_worker, *args)[0]


def run_single_process(fn, *args):
    """fn(*args) in this process as rank 0 of a world of one (free port), then tear the group down."""
    import os

    from megatron_qwen.platform import destroy_distributed
    from megatron_qwen.platform.spawn import free_port

    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        return fn(*args)
    finally:
        destroy_distributed()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
