"""Training checkpoints with megatron-core dist_checkpointing: save, rotate, resume, initialize a stage.

`initialize_weights` gives a fresh stage its weights (random, the previous stage's checkpoint, or an HF
directory imported by the converter the command line hands in); `Checkpointer` decides when to save.

Layout under `checkpoint.dir`:
    iter_0000020/         one complete checkpoint (model + optimizer shards, common.pt, metadata.json
                          with our model record, config.yaml = the resolved run config, rng/rank*.pt)
    iter_0000030.partial/ a save in progress (or interrupted): never read
    latest                "iter_0000020": moved (temp + rename) only after every rank's files are written and
                          flushed and the manifest is recorded
That holds for asynchronous saves too (`checkpoint.async_save`: megatron-core's async dist-checkpoint
writer, a forked process per rank, finalized at a later step boundary). A crash during a save therefore leaves `latest` on the previous complete checkpoint; `find_latest`
warns about anything newer it skips. Model and optimizer state are sharded tensors, so a checkpoint
saved at one TP/PP layout loads at another; the per-rank RNG states are restored only when the layout
is unchanged (with a warning otherwise).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel

from megatron_qwen.checkpointing import manifest
from megatron_qwen.checkpointing.weights import (
    load_model_checkpoint,
    load_trainable,
    model_state,
    read_record,
    write_record,
)
from megatron_qwen.config import Config, ConfigError, ModelConfig
from megatron_qwen.platform import compute_dtype, on_gpu
from megatron_qwen.platform.files import write_atomic

log = logging.getLogger(__name__)
LATEST = "latest"
PARTIAL = ".partial"


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def layout_key() -> list[int]:
    return [dist.get_world_size(), parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size()]


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
            "cuda": torch.cuda.get_rng_state() if on_gpu() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if state["cuda"] is not None and on_gpu():
        torch.cuda.set_rng_state(state["cuda"])


def full_state(chunks, optimizer, is_loading: bool) -> dict:
    """Model and optimizer sharded state dicts (the optimizer's keyed on the model's); frozen weights (LoRA's
    base) are not part of a training checkpoint."""
    state = model_state(chunks, trainable_only=True)
    if optimizer is not None:
        # "fully_reshardable": distributed-optimizer state in model space, loadable at any TP/PP/DP
        # (megatron's default format uses flattened ranges, which its torch_dist backend rejects).
        metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=metadata)
    return state


def save(root: str | Path, step: int, chunks, optimizer, scheduler, extra: dict, model: ModelConfig,
         config_yaml: str, keep_last: int, queue=None) -> Path:
    """Collective. Writes iter_{step}.partial; once every rank's files are written (now, or - with an
    `AsyncCallsQueue` - when the background write is finalized) `_complete` records, renames and moves
    `latest`. Returns the final dir."""
    root = Path(root)
    final = root / iter_name(step)
    tmp = root / (iter_name(step) + PARTIAL)
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    state = full_state(chunks, optimizer, is_loading=False)
    state["scheduler"] = scheduler.state_dict()
    state["train_state"] = dict(extra, step=step, layout=layout_key())
    dtype = str(next(chunks[0].parameters()).dtype).removeprefix("torch.")
    complete = functools.partial(_complete, tmp, final, model, dtype, config_yaml, keep_last)
    # With a queue, megatron's own async save: the tensors are staged now and a forked process writes (and
    # fsyncs) them while training goes on; the finalize functions (megatron's metadata.json, then ours) run
    # on every rank once all ranks' writers are done (`Checkpointer.poll`).
    request = dist_checkpointing.save(state, str(tmp), async_sharded_save=queue is not None,
                                      async_strategy="mcore")
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank{rank}.pt")
    if queue is None:
        complete()
    else:
        request.add_finalize_fn(complete)
        queue.schedule_async_request(request)
    return final


def _complete(tmp: Path, final: Path, model: ModelConfig, dtype: str, config_yaml: str, keep_last: int) -> None:
    """Collective, after every rank's shards are written: our record, the manifest, rename, `latest`."""
    rank = dist.get_rank()
    dist.barrier()  # every rank finished writing
    if rank == 0:
        write_record(tmp, model, hf_vocab_size=model.vocab_size, dtype=dtype)
        write_atomic(tmp / "config.yaml", config_yaml)
    dist.barrier()
    shares = [None] * dist.get_world_size()  # the manifest: each rank checksums (and flushes) its share
    dist.all_gather_object(shares, manifest.describe(tmp, rank, dist.get_world_size(), flush=True))
    if rank == 0:
        manifest.write_manifest(tmp, {k: v for share in shares for k, v in share.items()})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(final.parent / LATEST, final.name + "\n")
        _fsync_dir(final.parent)
        rotate(final.parent, keep_last)
    dist.barrier()


def _fsync_dir(path: Path) -> None:
    """Make the renames in `path` durable (a crash after this cannot bring back the old names)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotate(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (never the one `latest` names)."""
    if keep_last <= 0:
        return
    latest = (root / LATEST).read_text().strip()
    complete = sorted(p for p in root.glob("iter_*")
                      if p.is_dir() and not p.name.endswith(PARTIAL) and p.name <= latest)
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def find_latest(root: str | Path | None) -> Path | None:
    """The newest intact checkpoint at or before the one `latest` names (None if there is none).

    Newer, incomplete saves are ignored with a warning. Each candidate is checked against its manifest
    (collectively when a process group exists); a damaged one is reported file by file and the next older
    complete checkpoint is tried, so bad weights are never loaded silently."""
    if root is None:
        return None
    root = Path(root)
    marker = root / LATEST
    latest = root / marker.read_text().strip() if marker.is_file() else None
    for p in sorted(root.glob("iter_*")):
        if p.is_dir() and (latest is None or p.name > latest.name):
            log.warning("ignoring checkpoint %s: its save did not complete (latest is %s)", p,
                        latest.name if latest else "none")
    if latest is None:
        return None
    if not latest.is_dir():
        raise FileNotFoundError(f"{marker} names {latest.name}, which does not exist")
    candidates = sorted((p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(PARTIAL)
                         and p.name <= latest.name), reverse=True)
    for candidate in candidates:
        found = checkpoint_problems(candidate)
        if not found:
            if candidate != latest:
                log.error("resuming from %s, the newest intact checkpoint", candidate)
            return candidate
        log.error("checkpoint %s is damaged and will not be loaded: %s", candidate, "; ".join(found[:5]))
    raise RuntimeError(f"{root}: no intact checkpoint (all of {[p.name for p in candidates]} are damaged); "
                       "see the errors above, or start the stage again with checkpoint.resume=false")


def checkpoint_problems(ckpt: Path) -> list[str]:
    """Everything wrong with `ckpt` by its manifest, found by all ranks together (each checks a share)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if manifest.read_manifest(ckpt) is None:
        log.warning("%s has no %s (written by an older version): loading it unverified", ckpt, manifest.MANIFEST)
        return []
    mine = manifest.problems(ckpt, rank, world)
    if world == 1:
        return mine
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    return [p for share in everyone for p in share]


def resolve_checkpoint(path: str | Path) -> Path:
    """An iteration dir, or a checkpoint root holding a `latest` marker (the previous stage's dir)."""
    path = Path(path)
    if (path / LATEST).is_file():
        return find_latest(path)
    if (path / "metadata.json").is_file():
        found = checkpoint_problems(path)
        if found:
            raise RuntimeError(f"checkpoint {path} is damaged: " + "; ".join(found[:5]))
        return path
    raise FileNotFoundError(f"checkpoint.init_path={path}: neither a checkpoint nor a dir with a '{LATEST}' marker")


def _ensure_optimizer_state(optimizer) -> None:
    """megatron's distributed optimizer can describe its state for loading only once it has some: take
    one step on zero gradients with lr=0 (Adam and weight decay then move nothing); loading replaces it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and not opt.optimizer.state:
            groups = opt.optimizer.param_groups
            lrs = [g["lr"] for g in groups]
            for g in groups:
                g["lr"] = 0.0
            opt._init_optimizer_states_with_dummy_values()
            for g, lr in zip(groups, lrs):
                g["lr"] = lr


def _uses_torch_adam(opt) -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return isinstance(opt, distrib_optimizer.DistributedOptimizer) and not distrib_optimizer.HAVE_APEX_OR_TE


def load_optimizer(optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, working around megatron-core 0.19.2 with torch's Adam.

    Without Transformer Engine or apex (always on CPU; on GPU only if neither is installed) megatron's
    DistributedOptimizer wraps `torch.optim.Adam`, which keeps a tensor "step" in every parameter's
    state (FusedAdam keeps it in the param group). Two megatron bugs follow on load:
    1. `load_state_dict` puts the saved step into each param state, then loads the parameter state
       (`load_parameter_state_from_fully_reshardable` skips "step" in the checkpoint), and
       `_set_main_param_and_optimizer_states` copies every tensor of the live param state from the
       loaded one, "step" included: KeyError 'step' (distrib_optimizer.py:1218-1225).
    2. It puts the *same* step tensor into every param state (distrib_optimizer.py:1028-1032); Adam
       increments it in place once per parameter, so the bias correction after a resume is wrong.
    So for those optimizers we let megatron load everything but the parameter state (param groups and
    step), hide "step" while the parameter state loads, and give each param its own copy back.
    """
    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    states = [state] if len(opts) == 1 else [v for _, v in sorted(state.items())]
    deferred = []
    for opt, sd in zip(opts, states):
        if _uses_torch_adam(opt) and "param_state" in sd:
            kind = sd.pop("param_state_sharding_type")
            if kind != "fully_reshardable":
                raise NotImplementedError(f"distributed-optimizer state of type {kind} with torch Adam")
            deferred.append((opt, sd.pop("param_state")))
    optimizer.load_state_dict(state)  # param groups, grad scaler, and (torch Adam) the step
    for opt, param_state in deferred:
        inner = opt.optimizer.state
        steps = {p: s.pop("step") for p, s in inner.items() if "step" in s}
        try:
            opt.load_parameter_state_from_fully_reshardable(param_state)
        finally:
            for p, step in steps.items():
                inner[p]["step"] = step.detach().clone()


def load(ckpt: Path, chunks, optimizer, scheduler) -> dict:
    """Collective. Restore model, optimizer, scheduler and (same layout) RNG; returns train_state."""
    _ensure_optimizer_state(optimizer)
    state = full_state(chunks, optimizer, is_loading=True)
    loaded = dist_checkpointing.load(state, str(ckpt))
    for i, chunk in enumerate(chunks):
        load_trainable(chunk, loaded["model" if len(chunks) == 1 else f"model{i}"])
    load_optimizer(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    train_state = loaded["train_state"]
    rng = ckpt / "rng" / f"rank{dist.get_rank()}.pt"
    if list(train_state["layout"]) == layout_key() and rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    else:
        log.warning("%s was saved at layout (world, tp, pp) = %s, now %s: RNG states not restored",
                    ckpt, train_state["layout"], layout_key())
    return train_state


ARCHITECTURE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "vocab_size", "tie_word_embeddings")


def check_architecture(cfg: Config, path: Path) -> None:
    """The checkpoint's recorded shapes must be the configured model's (RoPE/YaRN/length may change)."""
    saved, _ = read_record(path)
    diffs = [f"model.{k}: checkpoint {getattr(saved, k)} vs config {getattr(cfg.model, k)}"
             for k in ARCHITECTURE if getattr(saved, k) != getattr(cfg.model, k)]
    if diffs:
        raise ConfigError(f"checkpoint.init_path={cfg.checkpoint.init_path} has another architecture: "
                          + "; ".join(diffs))


def start_weights_path(cfg: Config, import_hf=None) -> Path | None:
    """Where a fresh stage's weights come from (None: random). With init_from=hf, `import_hf(hf_dir,
    out_dir, parallel, dtype)` (the converter's, handed in by the command line) writes them once."""
    c = cfg.checkpoint
    if c.init_from == "checkpoint":
        path = resolve_checkpoint(c.init_path)
    elif c.init_from == "hf":
        if import_hf is None:
            raise ConfigError("checkpoint.init_from=hf needs the HF importer: start training with `megatron-qwen train`")
        path = Path(c.dir or ".") / "hf_import"
        if not path.is_dir():
            import_hf(c.init_path, path, cfg.parallel, compute_dtype(cfg.train.dtype), show_progress=False)
    else:
        return None
    check_architecture(cfg, path)
    return path


def initialize_weights(cfg: Config, chunks, import_hf=None) -> Path | None:
    """A fresh stage's weights: random (nothing to do), the previous stage's checkpoint, or an HF directory;
    returns where they came from."""
    path = start_weights_path(cfg, import_hf)
    if path is not None:
        log.info("initializing weights from %s (fresh optimizer and schedule)", path)
        load_model_checkpoint(chunks, path)
    return path


class Checkpointer:
    """Saves every `checkpoint.save_interval` steps, on request (a stop signal) and at the end.

    With `checkpoint.async_save` the periodic saves write in the background: `poll()` (every step, all
    ranks) completes a finished save, a new save first waits for the previous one, and the final save and
    `close()` wait for everything, so the process never exits with a save in flight."""

    def __init__(self, cfg: Config, chunks, optimizer, scheduler, config_yaml: str):
        self.cfg, self.chunks, self.optimizer, self.scheduler = cfg, chunks, optimizer, scheduler
        self.config_yaml = config_yaml
        self.run_id: str | None = None  # the W&B run, recorded so a resumed run continues it
        self.extra: dict = {}  # more train_state the trainer keeps across a resume (e.g. skipped_steps)
        self.last_saved: int | None = None
        self.queue = None
        if cfg.checkpoint.async_save and cfg.checkpoint.dir:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue()

    def due(self, step: int) -> bool:
        c, t = self.cfg.checkpoint, self.cfg.train
        return bool(c.dir and c.save_interval and step % c.save_interval == 0 and step < t.train_iters)

    def poll(self) -> None:
        """Collective: complete a background save whose writers have all finished (cheap otherwise)."""
        if self.queue is not None and self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=False)

    def close(self) -> None:
        """Collective: wait for a background save to be written and completed."""
        if self.queue is not None and self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=True)

    def save(self, step: int, wait: bool = False) -> None:
        c, t = self.cfg.checkpoint, self.cfg.train
        if not c.dir or self.last_saved == step:
            return
        self.close()  # one save in flight at a time
        extra = {"consumed_samples": step * t.global_batch_size, "wandb_id": self.run_id, "stage": self.cfg.stage.name,
                 **self.extra}
        save(c.dir, step, self.chunks, self.optimizer, self.scheduler, extra, self.cfg.model, self.config_yaml,
             c.keep_last, queue=None if wait else self.queue)
        self.last_saved = step
