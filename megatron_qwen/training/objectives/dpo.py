"""Offline DPO on megatron's schedules: paired micro-batches, a precomputed frozen reference, exact averaging.

Why it exists: DPO compares each pair's chosen and rejected answers, so both must reach the same loss
function call; the pair sources (`training.datasets.preference.PairRows`) batch whole pairs, padded
([2B, S], chosen rows first) or packed (THD rows of whole pairs, one `cu_seqlens` segment per sequence).

- With LoRA (`lora.enabled`) the reference is the base model: the policy's own chunks with every adapter
  switched off (`model.lora.adapters_disabled`), at the start or after a resume alike.
- The reference model is the stage's starting weights (`checkpoint.init_path`, the SFT result). Its
  response log-probs are computed once, forward-only, in `prepare` (called by the trainer before the
  first step): by the policy itself before its first update (it *is* the reference then: no second model
  in memory), or, when a run resumes without the cache, by the start weights the trainer loads on request.
  Data-parallel ranks split the pairs, the table [pairs, 2] is all-reduced, kept on the source and cached
  in `post.dpo.reference_cache` (default `checkpoint.dir/reference_logps.pt`; held-out pairs from
  `post.dpo.valid_prefix` get their own table, `reference_logps_val.pt`).
- `forward_step`: GPTModel given labels returns the per-token loss, i.e. −log p of every label (under TP:
  −vocab_parallel_cross_entropy, already complete on every TP rank); the loss function sums it over the
  answer tokens (the loss mask) of each sequence (`pair_logps`) and calls `dpo_loss.dpo_loss`.
- Averaging: the loss function returns (DPO loss × pairs in the micro-batch, pairs, report). step.py's
  per-token contract divides the summed gradients by the pairs of the whole global batch (over
  micro-batches and data-parallel ranks), so the step minimizes the mean over all pairs of the global
  batch — the same number on every layout. Every metric (rewards, accuracy, log-probs) travels in the
  report as [metric × pairs, pairs], so one reduction gives global means for training and evaluation alike.
  Context parallelism is not supported (sequence sums would need a CP all-reduce).
"""

from __future__ import annotations

import logging
from functools import cache, partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config import Config, ConfigError
from megatron_qwen.model.batch import Batch, forward, to_device
from megatron_qwen.model.lora import adapters_disabled
from megatron_qwen.platform.collectives import is_last_stage, reduce_to_all
from megatron_qwen.platform.files import atomic_path
from megatron_qwen.training.datasets.preference import PairRows, PreferenceDataset
from megatron_qwen.training.datasets.sft import dataset_prefix, pad_id
from megatron_qwen.training.objectives.base import Objective, PrepareContext, require_blend
from megatron_qwen.training.objectives.dpo_loss import dpo_loss, sequence_logps
from megatron_qwen.training.step import run_forward_backward

log = logging.getLogger(__name__)

METRICS = ("loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
           "logps/chosen", "logps/rejected")


class DPO(Objective):
    name = "dpo"
    metrics = METRICS

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        d = cfg.post.dpo
        self.beta, self.label_smoothing, self.sft_weight = d.beta, d.label_smoothing, d.sft_weight

    @classmethod
    def check(cls, cfg: Config, dp: int | None = None) -> None:
        blend, t, p = require_blend(cfg, "dpo"), cfg.train, cfg.post.dpo
        if cfg.parallel.context_parallel_size > 1:
            raise ConfigError("stage.objective=dpo does not support parallel.context_parallel_size > 1 yet; "
                              "set it to 1 (DPO sequences are short)")
        if len(blend) != 1:
            raise ConfigError(f"stage.objective=dpo reads one preference dataset: data.blend has {len(blend)} prefixes")
        if p.beta <= 0:
            raise ConfigError(f"post.dpo.beta ({p.beta}) must be > 0")
        if not 0.0 <= p.label_smoothing < 0.5:
            raise ConfigError(f"post.dpo.label_smoothing ({p.label_smoothing}) must be in [0, 0.5)")
        if p.sft_weight < 0:
            raise ConfigError(f"post.dpo.sft_weight ({p.sft_weight}) must be >= 0")
        if cfg.data.packed_sequences:
            if t.micro_batch_size != 1:
                raise ConfigError(f"stage.objective=dpo with data.packed_sequences=true needs train.micro_batch_size=1 "
                                  f"(got {t.micro_batch_size}): a packed row already holds several whole pairs and "
                                  "train.global_batch_size counts rows; raise data.seq_length instead")
            return
        if t.micro_batch_size % 2:
            raise ConfigError(f"with stage.objective=dpo, train.micro_batch_size ({t.micro_batch_size}) counts sequences "
                              "(a chosen and a rejected per pair) and must be even")
        if dp is not None and (t.global_batch_size // dp) % 2:
            raise ConfigError(f"with stage.objective=dpo, train.global_batch_size ({t.global_batch_size}) / data-parallel "
                              f"size ({dp}) counts sequences and must be even")

    def build_sources(self, train_samples: int, eval_samples: int) -> tuple[PairRows, PairRows | None]:
        """(train, held-out) pair sources, without reference tables yet (`prepare` adds them)."""
        cfg = self.cfg
        train = self._rows(cfg.data.blend[-1], shuffle=cfg.post.shuffle)
        valid = self._rows(cfg.post.dpo.valid_prefix, shuffle=False) if cfg.post.dpo.valid_prefix else None
        return train, valid

    def _rows(self, prefix: str, shuffle: bool) -> PairRows:
        cfg = self.cfg
        return PairRows(PreferenceDataset(dataset_prefix(prefix)), cfg.data.seq_length, pad_id(cfg), shuffle,
                        cfg.seed, packed=cfg.data.packed_sequences)

    def prepare(self, ctx: PrepareContext, train: PairRows, valid: PairRows | None) -> None:
        """Reference log-probs of every source: from the cache, or one forward-only pass (see the module doc)."""
        cfg = self.cfg
        if cfg.lora.enabled:  # the reference is the policy with its adapters switched off: no second model
            def reference():
                return ctx.chunks
        elif ctx.resumed:  # the policy has moved: reload the start weights, once, and only if some table is missing
            if cfg.checkpoint.init_from != "checkpoint":
                reference = _no_reference
            else:
                reference = cache(ctx.load_start_model)
        else:
            def reference():
                return ctx.chunks
        for rows, prefix, scope in ((train, cfg.data.blend[-1], "train"), (valid, cfg.post.dpo.valid_prefix, "val")):
            if rows is not None:
                self._reference_table(rows, prefix, scope, reference, ctx.resumed)

    def _reference_table(self, rows: PairRows, prefix: str, scope: str, reference, resumed: bool) -> None:
        cfg = self.cfg
        path, meta = _cache_path(cfg, scope), _meta(cfg, rows, prefix)
        cached = torch.load(path, weights_only=False) if path and path.exists() else None
        if cached is not None and cached["meta"] == meta:
            log.info("reference log-probs of %d %s pairs from %s", len(rows.pairs), scope, path)
            rows.reference = cached["logps"]
            return
        if cached is not None and not resumed:
            log.warning("%s was computed for %s, not %s: recomputing", path, cached["meta"], meta)
        log.info("reference log-probs of %d %s pairs: one forward-only pass of the %s", len(rows.pairs), scope,
                 "base model (adapters off)" if cfg.lora.enabled else "start weights (reloaded)" if resumed
                 else "policy before its first update")
        chunks = reference()
        with adapters_disabled(chunks):  # LoRA: the base weights; nothing to switch off otherwise
            rows.reference = compute_reference_logps(chunks, rows, cfg.train.micro_batch_size)
        if path and dist.get_rank() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save({"meta": meta, "logps": rows.reference}, tmp)

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        return forward(model, batch), partial(self.loss, batch)

    def loss(self, batch: Batch, output_tensor: torch.Tensor):
        """(DPO loss × pairs, pairs, report) of one micro-batch; output_tensor is the per-token −log p."""
        logps, counts = pair_logps(batch, output_tensor)
        ref = batch["reference_logps"].to(logps.device)
        b = batch["num_pairs"]
        out = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], chosen_tokens=counts[:b], beta=self.beta,
                       label_smoothing=self.label_smoothing, sft_weight=self.sft_weight)
        total = out.loss * b
        pairs = torch.tensor(float(b), dtype=torch.float64)
        report = {"loss": torch.stack([total.detach().double().cpu(), pairs])}
        for k in METRICS:
            value = float(out.metrics[k]) if k in out.metrics else 0.0
            report[k] = torch.tensor([value * b, float(b)], dtype=torch.float64)
        return total, torch.tensor(b, dtype=torch.int, device=total.device), report


def _no_reference():
    raise ConfigError("a resumed DPO run lost its reference log-probs (post.dpo.reference_cache) and can only "
                      "recompute them from checkpoint.init_from=checkpoint + checkpoint.init_path")


def pair_logps(batch: Batch, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([2B] summed answer log-probs, [2B] answer token counts), chosen sequences first, from the per-token
    −log p: summed per row ([2B, S] block) or per segment (packed row, `sequence_ids`)."""
    per_token = -output_tensor.float()
    seq = batch.get("sequence_ids")
    if seq is None:
        return sequence_logps(per_token, batch["loss_mask"])
    n = 2 * batch["num_pairs"]
    idx = seq.reshape(-1).to(per_token.device)
    mask = batch["loss_mask"].reshape(-1).to(per_token)
    sums = per_token.new_zeros(n + 1).index_add(0, idx, per_token.reshape(-1) * mask)
    counts = mask.new_zeros(n + 1).index_add(0, idx, mask)
    return sums[:n], counts[:n]  # index n collects the row's tail padding


def _reference_loss_func(batch: dict, output_tensor: torch.Tensor):
    logps, _ = pair_logps(batch, output_tensor)
    zero = logps.sum() * 0
    return zero, torch.tensor(1, dtype=torch.int), {"logps": logps.detach().cpu(), "pair_ids": batch["pair_ids"]}


def _reference_step(data_iterator, model):
    batch = next(data_iterator)
    return forward(model, batch), partial(_reference_loss_func, batch)


def compute_reference_logps(chunks, rows: PairRows, micro_batch_size: int, rounds: int = 8) -> torch.Tensor:
    """[pairs, 2] summed answer log-probs of `chunks` (forward-only), identical on every rank."""
    n = len(rows.pairs)
    groups = rows.reference_groups(micro_batch_size, parallel_state.get_data_parallel_rank(),
                                   parallel_state.get_data_parallel_world_size())
    table = torch.zeros(n, 2, dtype=torch.float64)
    saved, rows.reference = rows.reference, None
    for chunk in chunks:
        chunk.eval()
    with torch.no_grad():
        for start in range(0, len(groups), rounds):
            mbs = [to_device(rows.batch_of_pairs(ids)) for ids in groups[start:start + rounds]]
            reports = run_forward_backward(chunks, mbs, rows.seq_length, micro_batch_size, forward_only=True,
                                           step_func=_reference_step)
            if is_last_stage():
                for r in reports:
                    ids, lp = r["pair_ids"].cpu(), r["logps"].double()
                    table[ids, 0], table[ids, 1] = lp[:len(ids)], lp[len(ids):]
    for chunk in chunks:
        chunk.train()
    rows.reference = saved
    return reduce_to_all(table)


def _cache_path(cfg: Config, scope: str) -> Path | None:
    """post.dpo.reference_cache (default checkpoint.dir/reference_logps.pt); held-out pairs add `_val`."""
    ref, ck = cfg.post.dpo.reference_cache, cfg.checkpoint.dir
    base = Path(ref) if ref else (Path(ck) / "reference_logps.pt" if ck else None)
    if base is None or scope == "train":
        return base
    return base.with_name(f"{base.stem}_{scope}{base.suffix}")


def _meta(cfg: Config, rows: PairRows, prefix: str) -> dict:
    """What a cached reference table was computed for; a cache with other facts is recomputed."""
    return {"data": str(Path(str(prefix).removesuffix("_text_document")).resolve()), "pairs": len(rows.pairs),
            "seq_length": cfg.data.seq_length, "init_path": cfg.checkpoint.init_path, "pad_id": rows.pad_id,
            "packed": rows.packed}
